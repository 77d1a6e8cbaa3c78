import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def cluster(tmp_path):
    """A factory of `harness.Cluster`s, each stopped after the test, also when it fails."""
    from harness import Cluster

    made = []

    def make(**kwargs):
        made.append(Cluster(tmp_path, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.stop()
