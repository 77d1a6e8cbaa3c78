"""benchmarks/search_quality.py --replot: the table and the plot of a saved run, the plot written
beside the run (or where --plot says), never over the figures of docs/."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Seed 0 of a real run of the default search on a budget in worker hours (floats rounded).
RUN = json.loads((Path(__file__).parent / "data" / "search-quality-run.json").read_text())

pytestmark = pytest.mark.timeout(120)


def docs_figures() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (REPO / "docs").glob("*.png")}


def replot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_quality.py"), *args],
                          capture_output=True, text=True, timeout=100)


def test_replot_prints_the_margins_and_draws_beside_the_run_leaving_the_docs_alone(tmp_path):
    before = docs_figures()
    run = tmp_path / "sq.json"
    run.write_text(json.dumps(RUN))
    out = replot("--replot", str(run))
    assert out.returncode == 0, out.stderr
    assert "| 0 | 439 | 0.708 / 0.676 | 1318 | 0.726 (5 trials, 1228 s) |" in out.stdout
    assert "| default-hours | +0.050; median +0.050, 1 of 1 won | +0.032; median +0.032, 1 of 1 won |" in out.stdout
    assert (tmp_path / "sq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert docs_figures() == before


def test_replot_draws_where_plot_says(tmp_path):
    run = tmp_path / "sq.json"
    run.write_text(json.dumps(RUN))
    out = replot("--replot", str(run), "--plot", str(tmp_path / "figure.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "sq.png").exists()
