"""The journal's building blocks: its JSON encoding."""

import json
import math
import random

import pytest

from kt_cluster.chief.state import compact_json


def _random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-10**12, 10**12)
    if kind == 2:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 1e-300, math.nan, math.inf, -math.inf, -0.0])
    if kind in (3, 4):
        return "".join(rng.choice('ab"\\\n\té€😀/\x00') for _ in range(rng.randrange(6)))
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["k", "é\"", 1, -2.5, True, None] if kind == 6 else ["trial_id", "metrics", "step"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


@pytest.mark.parametrize("seed", range(3))
def test_compact_json_writes_what_json_dumps_writes(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        value = _random_value(rng)
        assert compact_json(value) == json.dumps(value, separators=(",", ":"))


def test_compact_json_refuses_what_json_refuses():
    with pytest.raises(TypeError, match="set"):
        compact_json({"a": {1, 2}})
