"""`ktc local`: a real 2-worker search over gRPC, as the README's first command runs it."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import TINY, merge

LINE = re.compile(r"chief on 127\.0\.0\.1:(\d+) \(metrics :(\d+)\), \d+ workers \(metrics :([\d,]+)\)")


@pytest.fixture(scope="module")
def local_search(tmp_path_factory):
    """Run one search; scrape chief and worker /metrics while it runs."""
    tmp = tmp_path_factory.mktemp("local")
    config = merge(TINY, {"max_trials": 4, "epochs": 2})
    (tmp / "search.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "kt_cluster", "local", "--workers", "2", "--config", str(tmp / "search.yaml"),
                             "--data", str(tmp / "data"), "--results", str(tmp / "results")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    scrapes = {"chief": [], "worker": []}
    lines = []
    try:
        ports = None
        for line in proc.stdout:
            lines.append(line)
            match = LINE.search(line)
            if match:
                ports = match.groups()
                break
        assert ports, "".join(lines)
        threading.Thread(target=_scrape_loop, args=(ports, scrapes, proc), daemon=True).start()
        out, _ = proc.communicate(timeout=600)
        lines.append(out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"code": proc.returncode, "output": "".join(lines), "results": tmp / "results", "scrapes": scrapes}


def _scrape_loop(ports, scrapes, proc):
    _, chief_port, worker_ports = ports
    while proc.poll() is None:
        for role, port in [("chief", chief_port)] + [("worker", p) for p in worker_ports.split(",")]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    scrapes[role].append(r.read().decode())
            except OSError:
                pass
        time.sleep(0.5)


def samples(text):
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def test_search_completes_every_trial_and_writes_best_results(local_search):
    assert local_search["code"] == 0, local_search["output"][-3000:]
    project = local_search["results"] / "ktc-search"
    trials = [json.loads(p.read_text()) for p in project.glob("trial_*/trial.json")]
    assert len(trials) == 4
    assert {t["status"] for t in trials} == {"COMPLETED"}
    best = json.loads((local_search["results"] / "best_hyperparameters.json").read_text())
    assert best["trial_id"] == max(trials, key=lambda t: t["score"])["trial_id"]
    assert set(best["hyperparameters"]) >= {"start_neurons", "net_depth", "activation"}
    assert (local_search["results"] / "best_model.keras").stat().st_size > 0


def test_search_prints_progress_and_the_results_summary(local_search):
    out = local_search["output"]
    assert "Results summary" in out and "Showing 10 best trials" in out
    assert re.search(r"\] 4/4 trials +completed 4", out)  # however soon the chief exits after the last trial


def test_the_chief_keeps_its_final_status_with_the_results(local_search):
    status = json.loads((local_search["results"] / "status.json").read_text())
    assert status["done"] and status["failure"] is None
    assert status["completed"] == 4 and status["running"] == [] and status["best"]["score"] is not None


def test_synthetic_dataset_is_generated_into_an_empty_data_dir(local_search):
    data = local_search["results"].parent / "data"
    assert (data / "classes.txt").read_text().split() == TINY["data"]["classes"]
    assert len(list((data / "train" / "images").iterdir())) > 0


def test_chief_metrics_are_scraped_during_the_search(local_search):
    scraped = local_search["scrapes"]["chief"]
    assert scraped, "no scrape of the chief succeeded"
    last = {s.name + json.dumps(s.labels, sort_keys=True): s.value for s in samples(scraped[-1])}
    assert last['ktc_chief_trials_max{}'] == 4
    names = {s.name for text in scraped for s in samples(text)}
    assert {"ktc_chief_trials", "ktc_chief_best_objective", "ktc_chief_trial_objective",
            "ktc_chief_worker_last_seen_timestamp_seconds", "ktc_chief_rpc_requests_total",
            "ktc_chief_rpc_duration_seconds_bucket", "ktc_search_info"} <= names
    created = [s for text in scraped for s in samples(text)
               if s.name == "ktc_chief_rpc_requests_total" and s.labels == {"method": "CreateTrial", "code": "OK"}]
    assert max(s.value for s in created) >= 4


def test_worker_metrics_show_trial_epoch_and_per_epoch_metrics(local_search):
    scraped = local_search["scrapes"]["worker"]
    assert scraped, "no scrape of a worker succeeded"
    all_samples = [s for text in scraped for s in samples(text)]
    assert any(s.name == "ktc_worker_current_epoch" and s.value >= 0 for s in all_samples)
    assert any(s.name == "ktc_worker_trial" and s.value == 1 and "trial_id" in s.labels for s in all_samples)
    epoch_metrics = {s.labels["metric"] for s in all_samples if s.name == "ktc_worker_epoch_metric"}
    assert {"loss", "f1", "val_f1", "val_iou", "val_precision", "val_recall"} <= epoch_metrics
    assert any(s.name == "ktc_worker_epoch_duration_seconds_count" and s.value >= 1 for s in all_samples)
    assert any(s.name == "ktc_worker_trials_total" and s.labels["outcome"] == "completed" and s.value >= 1
               for s in all_samples)


def test_results_command_exports_every_trial(local_search):
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "results", "--results", str(local_search["results"]),
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" and "start_neurons" in r for r in rows)


def processes_mentioning(text):
    """Pids of live processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_ctrl_c_stops_the_search_and_leaves_no_process_behind(tmp_path):
    config = merge(TINY, {"max_trials": 6, "epochs": 30})
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results-ctrl-c"
    proc = subprocess.Popen([sys.executable, "-m", "kt_cluster", "local", "--workers", "2", "--config",
                             str(tmp_path / "search.yaml"), "--data", str(tmp_path / "data"),
                             "--results", str(results)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if "running 2" in line:  # both workers are training
                break
        children = [pid for pid in processes_mentioning(str(results)) if pid != proc.pid]
        assert len(children) == 3  # chief and two workers
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, out
        assert "interrupted" in out
        assert processes_mentioning(str(results)) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_mentioning(str(results)):
            os.kill(pid, signal.SIGKILL)
