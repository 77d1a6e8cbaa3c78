"""Every dashboard query and every alert against a real Prometheus scraping a real `ktc local` search.

One search runs for the whole module (`live`): `ktc local --workers 2` on a tiny config, with a
Prometheus scraping the chief (job `ktc-chief`) and both workers (job `ktc-worker`) every second,
with the `namespace` and `pod` target labels Kubernetes gives the chart's pods (the dashboards
select by them), plus a DCGM exporter's GPU series for the workers, and loading the alert rules. While it runs, the chief's and a training worker's /metrics are kept
for `promtool check metrics`, and that worker is frozen (SIGSTOP) until its trial lease expires,
then thawed (SIGCONT): a healthy search never requeues a trial, and without one the requeue
panels would have nothing to show. The search then finishes normally.

Afterwards each query is evaluated with `query_range` over the search's window (worker series end
when the workers exit, so an instant query after the search would miss them):
- every PromQL target of every dashboard panel, Grafana variables replaced ($__rate_interval by
  15s; $namespace, $search and $pod by their "All" value `.+`; $objective by the value its own
  label_values() query finds), must parse and return data; only the queries listed in
  `prometheus_support.MAY_BE_EMPTY` may be empty (they must still parse), each with its reason;
- every variable query of every dashboard must find values;
- every alert expression must parse; since a healthy search fires none, each alert is also cut
  into the series it compares (`prometheus_support.probes`: thresholds, `absent()` and
  `and`/`or`/`unless` removed) and every part must return data;
- all rules load healthy, and no alert fires during the search.

Needs Debian's `prometheus` package (see prometheus_support.INSTALL_HINT). Takes under a minute
on 2 cores (TensorFlow start-up included).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prometheus_support as ps  # noqa: E402
from kt_cluster import endpoints  # noqa: E402
from kt_cluster.supervisor import is_noise  # noqa: E402
from local_support import local_run  # noqa: E402

pytestmark = pytest.mark.timeout(420)

# Warnings of every epoch, left out of the logs shown on failure (with TensorFlow's start-up lines).
NOISE = re.compile(r"UserWarning|data_adapter")
LEASE_SECONDS = 5.0
RATE_INTERVAL = "15s"
# The namespace and pod names the search's targets get, as the chart's pods would.
NAMESPACE, SEARCH = "ml", "unet-kt-cluster"
CHIEF_POD = f"{SEARCH}-chief-0"

# The brief's tiny search, with three activations so that max_trials (3) trials run (one value
# each would leave a single point in the space), a short lease so that a frozen worker loses its
# trial within seconds, and enough epochs that a worker still trains for a few seconds once
# Prometheus (scraping every second) holds its first epoch's metrics: an epoch of this search
# takes a fraction of a second: with 4 epochs a trial whose trace was quick ended before its
# worker could be caught training, and with 12 on a loaded machine every trial did once.
CONFIG = {
    "tuner": "random", "max_trials": 3, "epochs": 30, "batch_size": 4, "early_stopping": False,
    "lease_seconds": LEASE_SECONDS,
    "data": {"image_size": 32, "synthetic": True},
    "space": {"start_neurons": {"min": 8, "max": 8, "step": 8}, "net_depth": {"min": 2, "max": 2},
              "activation": ["relu", "elu", "lrelu"], "dropout": False, "bn_after_act": False,
              "pos_weight_power": [1.0]},
}


@dataclass
class Live:
    prometheus: ps.Prometheus
    start: float
    end: float
    scrapes: dict[str, str]
    output: str
    run_dir: Path
    requeued: bool
    drive: dict[str, int]  # what `_drive` saw on its way to freezing a worker

    def query_range(self, expr: str) -> dict:
        return self.prometheus.query_range(expr, self.start, self.end, step=1.0)

    def logs(self) -> str:
        parts = ["\n".join(self.output.splitlines()[-40:])]
        for log in sorted(self.run_dir.glob("*.log")):
            lines = [line for line in log.read_text(errors="replace").splitlines()
                     if not NOISE.search(line) and not is_noise(line)]
            parts.append(f"--- {log.name} ---\n" + "\n".join(lines[-25:]))
        return "\n".join(parts) + "\n" + self.prometheus.tail()


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def _try_scrape(port: int, timeout: float = 2.0) -> str | None:
    try:
        return ps.scrape(port, timeout=timeout)
    except OSError:
        return None


def _freeze_until_lease_expires(worker_pid: int, chief_port: int) -> bool:
    """SIGSTOP the worker until the chief expires its lease (or a timeout); always SIGCONT."""
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + LEASE_SECONDS + 5
        while time.monotonic() < deadline:
            text = _try_scrape(chief_port)
            if text and (_metric(text, "ktc_chief_leases_expired_total") or 0) >= 1:
                return True
            time.sleep(0.25)
        return False
    finally:
        os.kill(worker_pid, signal.SIGCONT)


def _drive(proc: subprocess.Popen, prom: ps.Prometheus, chief_port: int, pids: dict[int, int],
           scrapes: dict[str, str], seen: collections.Counter) -> bool:
    """While the search runs: keep scrapes for promtool, then freeze a training worker once.

    The worker is frozen only once Prometheus holds its trial's epoch metrics (a frozen worker
    cannot be scraped, and a trial that loses its lease drops them), and only while it still
    trains (its /metrics still shows them just before SIGSTOP).
    """
    while proc.poll() is None:
        for port in pids:
            text = _try_scrape(port)
            seen["worker scrapes"] += 1
            # Epoch metrics are there from the end of a trial's first epoch to the end of the next
            # trial's first epoch.
            if text is None or "ktc_worker_epoch_metric{" not in text:
                continue
            seen["with epoch metrics"] += 1
            chief = _try_scrape(chief_port)
            if chief is None:
                continue
            scrapes.setdefault("worker", text)
            scrapes.setdefault("chief", chief)
            stored = prom.query(f'ktc_worker_epoch_metric{{instance="127.0.0.1:{port}"}}')
            if not stored.get("data", {}).get("result"):
                continue
            seen["held by prometheus"] += 1
            text = _try_scrape(port)
            # A worker keeps its last trial's epoch metrics while its next trial starts, so ask
            # whether it is training now (current epoch >= 0) before freezing it.
            epoch = _metric(text, "ktc_worker_current_epoch") if text else None
            if epoch is not None and epoch >= 0:
                seen["frozen while training"] += 1
                if _freeze_until_lease_expires(pids[port], chief_port):
                    return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    ps.binary("prometheus")
    ps.binary("promtool")
    tmp = tmp_path_factory.mktemp("monitoring")
    config = dict(CONFIG, data=dict(CONFIG["data"], path=str(tmp / "data")), results=str(tmp / "results"))
    (tmp / "search.yaml").write_text(yaml.safe_dump(config))
    search_dir = tmp / "results" / "ktc-search"
    with local_run(["--workers", "2", "--quiet", "--config", str(tmp / "search.yaml")], search_dir) as run:
        where = run.endpoints()
        chief_port = where["chief_metrics_port"]
        workers = {p["metrics_port"]: p["pid"] for name, p in sorted(where["processes"].items()) if name != "chief"}
        worker_ports = list(workers)
        # The target labels Kubernetes' service discovery gives the chart's pods, which the
        # dashboards select by; and a DCGM exporter, in its own pod, reporting the workers' GPUs.
        pods = [CHIEF_POD] + [f"{SEARCH}-worker-{i}" for i in range(len(worker_ports))]
        gpus = [{"namespace": NAMESPACE, "pod": pod, "container": "worker"} for pod in pods[1:]]
        gpus.append({"namespace": "elsewhere", "pod": "other-worker-0", "container": "worker"})
        with contextlib.ExitStack() as stack:
            dcgm_port = stack.enter_context(ps.dcgm_exporter(gpus))
            targets = {
                "ktc-chief": [(f"127.0.0.1:{chief_port}", {"namespace": NAMESPACE, "pod": pods[0]})],
                "ktc-worker": [(f"127.0.0.1:{port}", {"namespace": NAMESPACE, "pod": pod})
                               for port, pod in zip(worker_ports, pods[1:])],
                "dcgm": [(f"127.0.0.1:{dcgm_port}", {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-x7k2p"})],
            }
            prom = stack.enter_context(ps.running_prometheus(targets, [ps.RULES], scrape_interval="1s",
                                                             workdir=tmp / "prometheus"))
            start = time.time()
            scrapes: dict[str, str] = {}
            seen: collections.Counter = collections.Counter()
            requeued = _drive(run.proc, prom, chief_port, workers, scrapes, seen)
            code = run.finish(timeout=240)
            time.sleep(2.5)  # the last scrapes, then staleness markers
            result = Live(prom, start - 1, time.time(), scrapes, run.output, endpoints.run_dir(search_dir), requeued,
                          dict(seen))
            assert code == 0, f"ktc local exited with {code}\n{result.logs()}"
            yield result


# --- what the search produced -------------------------------------------------------------------

def test_a_worker_lost_its_lease_and_the_search_still_finished(live):
    assert live.requeued, f"no worker could be frozen mid-trial until its lease expired ({live.drive})\n" + live.logs()


@pytest.mark.parametrize("role", ["chief", "worker"])
def test_promtool_check_metrics_finds_nothing(live, role):
    text = live.scrapes.get(role)
    assert text, f"no {role} scrape was taken during the search\n{live.logs()}"
    if role == "worker":
        assert "ktc_worker_epoch_metric{" in text and "ktc_worker_trial{" in text
    result = ps.promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


# --- dashboards ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def variable_values(live) -> dict[str, dict[str, str]]:
    """{dashboard uid: {variable: value}} as Grafana would substitute them, resolved in order."""
    resolved: dict[str, dict[str, str]] = {}
    for dashboard in ps.load_dashboards().values():
        values: dict[str, str] = {}
        for var in dashboard["templating"]["list"]:
            if var["type"] == "datasource":
                continue
            if var["type"] in ("textbox", "constant", "custom"):
                values[var["name"]] = str(var["query"]).split(",")[0]
                continue
            found = _label_values(live, ps.grafana_expand(ps.variable_query(var), values), var.get("regex"))
            if var.get("includeAll"):
                values[var["name"]] = var.get("allValue") or "|".join(found)
            else:
                values[var["name"]] = found[0] if found else ""
        resolved[dashboard["uid"]] = values
    return resolved


def _label_values(live: Live, query: str, regex: str | None = None) -> list[str]:
    """What Grafana lists for the variable: label values, through the variable's regex (whose
    first group, when it has one, is the value) when it has one."""
    match = ps.LABEL_VALUES.match(query)
    assert match, f"{query!r}: only label_values(selector, label) variable queries are supported here"
    selector, label = match.group(1) or "{__name__=~\".+\"}", match.group(2)
    series = live.prometheus.series(selector, live.start, live.end)
    values = sorted({s[label] for s in series if label in s})
    if regex:
        pattern = re.compile(regex.strip("/"))
        values = sorted({(m.group(1) if m.groups() else m.group(0)) for v in values if (m := pattern.search(v))})
    return values


VARIABLES = [(d["uid"], v) for d in ps.load_dashboards().values() for v in d["templating"]["list"]
             if v["type"] == "query"]


@pytest.mark.parametrize("uid,variable", VARIABLES, ids=[f"{u}:{v['name']}" for u, v in VARIABLES])
def test_dashboard_variable_finds_values(live, variable_values, uid, variable):
    values = {k: v for k, v in variable_values[uid].items() if k != variable["name"]}
    query = ps.grafana_expand(ps.variable_query(variable), values)
    found = _label_values(live, query, variable.get("regex"))
    assert found, f"{query} found no values\n{live.logs()}"
    expected = {"namespace": [NAMESPACE], "search": [SEARCH]}.get(variable["name"])
    assert expected is None or found == expected, (variable["name"], found)


TARGETS = ps.dashboard_targets()


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_dashboard_query_returns_data(live, variable_values, target):
    expr = ps.grafana_expand(target.expr, variable_values[target.dashboard], RATE_INTERVAL)
    body = live.query_range(expr)
    assert body.get("status") == "success", f"{expr}\n-> HTTP {body.get('http_status')}: {body.get('error')}"
    if not body["data"]["result"]:
        # A query listed in MAY_BE_EMPTY (the GPU panel: no GPU exporter here) is held to parsing only.
        if (target.dashboard, target.panel, target.ref_id) in ps.MAY_BE_EMPTY:
            return
        pytest.fail(f"no data for {target.id}:\n{expr}\n{live.logs()}")


# --- rules --------------------------------------------------------------------------------------

RULES = ps.load_rules()
PROBES = [(rule, probe) for rule in RULES for probe in ps.probes(rule.expr)]


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_rule_expression_parses(live, rule):
    body = live.query_range(rule.expr)
    assert body.get("status") == "success", f"{rule.expr}\n-> {body.get('error')}"


@pytest.mark.parametrize("rule,probe", PROBES, ids=[f"{r.name}:{' '.join(p.split())[:90]}" for r, p in PROBES])
def test_each_part_of_each_rule_returns_data(live, rule, probe):
    body = live.query_range(probe)
    assert body.get("status") == "success", f"{probe}\n-> {body.get('error')}"
    assert body["data"]["result"], f"{rule.name}: no data for {probe}\n{live.logs()}"


def test_rules_are_loaded_and_healthy(live):
    loaded = {rule["name"]: rule for rule in live.prometheus.rules()}
    assert sorted(loaded) == sorted(r.name for r in RULES)
    unhealthy = {name: rule.get("lastError") for name, rule in loaded.items() if rule.get("health") != "ok"}
    assert not unhealthy, unhealthy


def test_a_healthy_search_fires_no_alert(live):
    body = live.query_range('ALERTS{alertstate="firing"}')
    assert body["status"] == "success"
    assert not body["data"]["result"], [s["metric"] for s in body["data"]["result"]]


def test_gpu_panel_finds_the_workers_gpus_by_the_pod_dcgm_names(live, variable_values):
    """dcgm-exporter names the pod holding each GPU; scraped as its own pod, Prometheus keeps that
    as `exported_pod`. The panel shows the selected search's GPUs under their worker pods."""
    target = next(t for t in TARGETS if t.panel == "GPU utilisation (DCGM)")

    def pods(selection: dict[str, str]) -> set[tuple[str, str]]:
        expr = ps.grafana_expand(target.expr, variable_values[target.dashboard] | selection, RATE_INTERVAL)
        body = live.query_range(expr)
        assert body.get("status") == "success", body.get("error")
        return {(s["metric"]["namespace"], s["metric"]["pod"]) for s in body["data"]["result"]}

    workers = {(NAMESPACE, f"{SEARCH}-worker-{i}") for i in range(2)}
    assert pods({"namespace": NAMESPACE, "search": SEARCH}) == workers  # this search, as its dashboards open
    assert pods({"namespace": NAMESPACE, "search": SEARCH, "pod": f"{SEARCH}-worker-1"}) == {(NAMESPACE, f"{SEARCH}-worker-1")}
    assert pods({}) == workers | {("elsewhere", "other-worker-0")}  # "All": every search's workers
