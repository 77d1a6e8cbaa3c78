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

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import TINY, make_dataset, merge
from local_support import local_run, processes_mentioning


@pytest.fixture(scope="module")
def local_search(tmp_path_factory):
    """Run one search; scrape chief and worker /metrics and ask `ktc status --results` while it runs."""
    tmp = tmp_path_factory.mktemp("local")
    config = merge(TINY, {"max_trials": 4, "epochs": 2, "data": {"synthetic": True}})
    (tmp / "search.yaml").write_text(yaml.safe_dump(config))
    # With a final scrape: each process serves /metrics, once the search is over, until scraped.
    args = ["--workers", "2", "--config", str(tmp / "search.yaml"), "--data", str(tmp / "data"),
            "--results", str(tmp / "results"), "--final-scrape-seconds", "60"]
    scrapes = {"chief": [], "worker": []}
    scrapers = []
    with local_run(args, tmp / "results" / "ktc-search") as run:
        where = run.endpoints()
        for name, process in where["processes"].items():
            role = name.split("-")[0]
            # A tiny trial's epochs take a fraction of a second: scrape workers often.
            every = 0.5 if role == "chief" else 0.05
            scrapers.append(threading.Thread(target=_scrape_loop, daemon=True,
                                             args=(process["metrics_port"], every, scrapes[role], run.proc)))
            scrapers[-1].start()
        run.wait_for(lambda s: True, what="the chief answering")
        live = subprocess.run([sys.executable, "-m", "kt_cluster", "status", "--results", str(tmp / "results"), "--json"],
                              capture_output=True, text=True, timeout=60)
        code = run.finish(timeout=600)
        started = time.monotonic()
    for scraper in scrapers:  # each ends with ktc local; its last scrape is recorded by then
        scraper.join(max(0.0, 30 - (time.monotonic() - started)))
    return {"code": code, "output": run.output, "results": tmp / "results", "search": tmp / "results" / "ktc-search",
            "scrapes": scrapes, "endpoints": where, "live_status": live, "args": args}


def _scrape_loop(port, every, scraped, proc):
    """Scrape one process every `every` seconds while the search runs."""
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                scraped.append(r.read().decode())
        except OSError:
            time.sleep(0.1)  # not serving yet, or gone
        time.sleep(every)


def samples(text):
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def test_search_completes_every_trial_and_writes_best_results(local_search):
    assert local_search["code"] == 0, local_search["output"][-3000:]
    search = local_search["search"]
    trials = [json.loads(p.read_text()) for p in search.glob("trial_*/trial.json")]
    assert len(trials) == 4
    assert {t["status"] for t in trials} == {"COMPLETED"}
    best = json.loads((search / "best_hyperparameters.json").read_text())
    assert best["trial_id"] == max(trials, key=lambda t: t["score"])["trial_id"]
    assert set(best["hyperparameters"]) >= {"start_neurons", "net_depth", "activation"}
    assert (search / "best_model.keras").stat().st_size > 0
    # Everything in the search's own folder: another search on the same volume overwrites nothing.
    assert sorted(p.name for p in local_search["results"].iterdir()) == ["ktc-search"]


def test_trial_files_record_which_way_each_metric_is_better(local_search):
    for path in local_search["search"].glob("trial_*/trial.json"):
        directions = {name: m["direction"] for name, m in json.loads(path.read_text())["metrics"]["metrics"].items()}
        for name in ("f1", "precision", "recall", "iou"):
            assert directions[name] == directions[f"val_{name}"] == "max", (path, directions)
        assert directions["loss"] == directions["val_loss"] == "min", (path, directions)


def test_search_prints_progress_and_its_own_summary(local_search):
    out = local_search["output"]
    assert re.search(r"\] 4/4 trials +completed 4", out)  # however soon the chief exits after the last trial
    assert "Search ktc-search (random): 4 trials, 4 completed; best val_f1" in out
    assert re.search(r"rank +trial +val_f1 \(max\) +start_neurons +net_depth +activation +epochs +status", out)
    assert len(re.findall(r"^ +[1-4] +\d+ +\d\.\d{4} .* 1-2 +completed$", out, flags=re.M)) == 4
    assert re.search(rf"^  best model +{re.escape(str(local_search['search'] / 'best_model.keras'))}$", out, flags=re.M)
    assert "tuner/" not in out and "Showing 10 best trials" not in out  # keras-tuner's text stays in its file
    assert "Showing 10 best trials" in (local_search["search"] / "summary-keras-tuner.txt").read_text()


def test_no_tensorflow_start_up_line_reaches_the_terminal(local_search):
    out = local_search["output"]
    for noise in ("I0000", "absl::InitializeLog", "cuda", "oneDNN", "TensorFlow binary"):
        assert noise not in out, noise
    chief_log = (local_search["search"] / "local" / "chief.log").read_text()
    assert "chief: serving the oracle" in chief_log  # the processes' own lines stay in their logs


def test_it_says_how_to_watch_the_search_and_status_finds_it_from_the_results_dir(local_search):
    where = local_search["endpoints"]
    token_file = local_search["search"] / "local" / "token"
    assert where["token_file"] == str(token_file)
    assert f"ktc status --chief {where['chief']} --auth-token-file {token_file}" in local_search["output"]
    live = local_search["live_status"]
    assert live.returncode == 0, live.stderr
    assert json.loads(live.stdout)["max_trials"] == 4
    after = subprocess.run([sys.executable, "-m", "kt_cluster", "status", "--results", str(local_search["results"])],
                           capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr
    assert "final status" in after.stdout and "4/4 trials" in after.stdout and "search complete" in after.stdout


def test_the_chief_keeps_its_final_status_with_the_results(local_search):
    status = json.loads((local_search["search"] / "status.json").read_text())
    assert status["done"] and status["failure"] is None
    assert status["completed"] == 4 and status["running"] == [] and status["best"]["score"] is not None


def test_synthetic_dataset_is_generated_into_an_empty_data_dir(local_search):
    data = local_search["results"].parent / "data"
    assert (data / "classes.txt").read_text().split() == TINY["data"]["classes"]
    assert len(list((data / "train" / "images").iterdir())) > 0


def test_a_rerun_of_the_finished_search_says_it_is_complete_and_starts_nothing(local_search):
    summary = (local_search["search"] / "summary.txt").read_text()
    started = time.monotonic()
    again = subprocess.run([sys.executable, "-m", "kt_cluster", "local", *local_search["args"]],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == (f"ktc local: search 'ktc-search' is already complete; its results "
                                            f"are in {local_search['search']}")
    assert summary in again.stdout
    assert time.monotonic() - started < 20  # no TensorFlow process was started


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


def test_every_worker_is_scraped_once_more_after_its_last_trial(local_search):
    # Told that the search is over, a worker that ran trials serves /metrics until a scrape has
    # read its final counts: the last scrapes of the workers hold all 4 trials between them.
    last = {}
    for text in local_search["scrapes"]["worker"]:
        scraped = samples(text)
        worker = next(s.labels["tuner_id"] for s in scraped if s.name == "ktc_worker_info")
        last[worker] = scraped
    completed = {worker: sum(s.value for s in scraped if s.name == "ktc_worker_trials_total"
                             and s.labels["outcome"] == "completed")
                 for worker, scraped in last.items()}
    assert sum(completed.values()) == 4, completed


def test_results_command_exports_every_trial(local_search):
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "results", "--results", str(local_search["results"]),
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" and "start_neurons" in r for r in rows)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_search_and_leaves_no_process_behind(tmp_path, signum):
    config = merge(TINY, {"max_trials": 6, "epochs": 30, "data": {"synthetic": True}})
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results-ctrl-c"
    args = ["--workers", "2", "--config", str(tmp_path / "search.yaml"), "--data", str(tmp_path / "data"),
            "--results", str(results)]
    with local_run(args, results / "ktc-search") as run:
        pids = [p["pid"] for p in run.endpoints()["processes"].values()]
        run.wait_for(lambda s: len(s["running"]) == 2, what="both workers training")
        children = [pid for pid in processes_mentioning(str(results)) if pid != run.proc.pid]
        assert sorted(children) == sorted(pids)  # chief and two workers
        run.proc.send_signal(signum)
        assert run.finish(timeout=120) == 128 + signum, run.output
        assert "interrupted" in run.output
        assert processes_mentioning(str(results)) == []


def test_every_worker_gone_with_trials_left_ends_ktc_local_with_a_message(tmp_path):
    """Both workers hand their trials back (SIGTERM) and exit 0: nothing is left to run them."""
    config = merge(TINY, {"max_trials": 4, "epochs": 30, "data": {"synthetic": True}})
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    args = ["--workers", "2", "--config", str(tmp_path / "search.yaml"), "--data", str(tmp_path / "data"),
            "--results", str(results)]
    with local_run(args, results / "ktc-search") as run:
        workers = {name: p["pid"] for name, p in run.endpoints()["processes"].items() if name != "chief"}
        run.wait_for(lambda s: len(s["running"]) == 2, what="both workers training")
        for pid in workers.values():
            os.kill(pid, signal.SIGTERM)
        gone = time.monotonic()
        code = run.finish(timeout=120)
        assert code != 0, run.output
        assert time.monotonic() - gone < 60
        assert ("ktc local: every worker has exited (worker-0 exit 0, worker-1 exit 0) but the search is not "
                "over: 0 of 4 trials completed") in run.output, run.output[-3000:]
        assert processes_mentioning(str(results)) == []


def test_a_missing_data_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(TINY))
    missing = tmp_path / "does-not-exist"
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "local", "--config", str(tmp_path / "search.yaml"),
                          "--data", str(missing), "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"ktc local: {missing}: dataset directory does not exist (data.path, --data); for "
                                  "synthetic scans set data.synthetic: true or pass --synthetic-data")
    assert not missing.exists() and not (tmp_path / "results").exists()


def test_a_broken_dataset_stops_ktc_local_before_any_process_starts(tmp_path):
    data = make_dataset(tmp_path / "data")
    (data / "classes.txt").write_text("stamp\ntable_number\nsignature\n")  # another order than the config's
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(TINY))
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "kt_cluster", "local", "--config", str(tmp_path / "search.yaml"),
                          "--data", str(data), "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and time.monotonic() - started < 10
    assert out.stderr.splitlines() == [
        f"ktc local: {data / 'classes.txt'} lists classes ['stamp', 'table_number', 'signature'] but the config's "
        "data.classes is ['table_number', 'stamp', 'signature']; make them equal (same names, same order)"]
    assert not (tmp_path / "results").exists()
