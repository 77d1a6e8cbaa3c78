"""A real Prometheus for tests, plus the readers that turn dashboards and rules into PromQL.

`running_prometheus()` writes a prometheus.yml with static scrape targets on 127.0.0.1, loads the
rules file, starts `prometheus` as a subprocess on a free loopback port with its TSDB in a
temporary directory, waits for `/-/ready` and always stops it again (also when the test fails).
Binaries come from Debian's `prometheus` package (`apt-get install -y prometheus`, which brings
`promtool`); without them the tests skip, unless `KTC_REQUIRE_PROMETHEUS=1` (CI) makes that a
failure.

`dashboard_targets()` lists every PromQL target of every panel of every dashboard,
`grafana_expand()` replaces Grafana's variables in an expression, `load_rules()` lists every
alerting and recording rule, and `probes()` takes an alert expression apart into the series it
compares (thresholds and `absent()` removed, `and`/`or`/`unless` split), so that a test can check
that each part returns data in a healthy search, where the alert itself must stay silent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from kt_cluster.supervisor import Child

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "helm" / "kt-cluster" / "dashboards"
RULES = ROOT / "helm" / "kt-cluster" / "rules" / "alerts.yaml"
RULE_TESTS = ROOT / "monitoring" / "alerts.test.yml"
INSTALL_HINT = "apt-get update && apt-get install -y --no-install-recommends prometheus"

# Dashboard queries allowed to return no data, with the reason; every other query must return data.
MAY_BE_EMPTY = {
    ("ktc-trials", "Why trials failed or stopped", "A"):
        "ktc_chief_trial_setback_info lists failed and early-stopped trials; the healthy search scraped here "
        "has none (tests/test_chief_metrics.py proves the series on failed, invalid and stopped trials)",
}


# --- binaries ---------------------------------------------------------------------------------

def binary(name: str) -> str:
    """Path of `prometheus` or `promtool`; skip the test (fail under KTC_REQUIRE_PROMETHEUS=1) without it."""
    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({INSTALL_HINT})"
        if os.environ.get("KTC_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the server -------------------------------------------------------------------------------

class PrometheusError(AssertionError):
    pass


@dataclass
class Prometheus:
    url: str
    log: Path

    def get(self, path: str, params: dict[str, Any] | list[tuple[str, Any]] | None = None,
            timeout: float = 30.0) -> dict[str, Any]:
        """GET an API path; returns the decoded body, also for HTTP 4xx/5xx (status "error")."""
        query = f"?{urllib.parse.urlencode(params or {})}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=timeout) as response:
                body = json.loads(response.read())
                body["http_status"] = response.status
                return body
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            body["http_status"] = exc.code
            return body

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.get("/api/v1/query", params)

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> dict[str, Any]:
        return self.get("/api/v1/query_range",
                        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"})

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        body = self.get("/api/v1/series", [("match[]", match), ("start", f"{start:.3f}"), ("end", f"{end:.3f}")])
        if body.get("status") != "success":
            raise PrometheusError(f"series {match!r}: {body.get('error')}")
        return body["data"]

    def rules(self) -> list[dict[str, Any]]:
        body = self.get("/api/v1/rules")
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets")["data"]["activeTargets"]

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "--- prometheus log ---\n" + "\n".join(text[-lines:])


Targets = dict[str, list["str | tuple[str, dict[str, str]]"]]


def write_config(path: Path, targets: Targets, rule_files: list[Path], scrape_interval: str = "1s") -> None:
    """`targets`: {job: [address, or (address, target labels such as Kubernetes' namespace and pod)]}."""
    def group(target) -> dict:
        address, labels = (target, None) if isinstance(target, str) else target
        return {"targets": [address], **({"labels": labels} if labels else {})}

    config = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [group(t) for t in addresses]}
                           for job, addresses in targets.items()],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextlib.contextmanager
def running_prometheus(targets: Targets, rule_files: list[Path] = (),
                       scrape_interval: str = "1s", workdir: Path | None = None,
                       ready_timeout: float = 60.0) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (see write_config); stopped on exit, always."""
    exe = binary("prometheus")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ktc-prometheus-")))
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        write_config(config, targets, list(rule_files), scrape_interval)
        port = free_port()
        log = workdir / "prometheus.log"
        process = Child.start("prometheus", [
            exe, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            # Debian's defaults point at /etc and /usr/share; none of it is needed here.
            f"--web.console.templates={workdir}", f"--web.console.libraries={workdir}"], log)
        server = Prometheus(f"http://127.0.0.1:{port}", log)
        try:
            _wait_ready(server, process, ready_timeout)
            yield server
        finally:
            process.stop(grace=10.0)


def _wait_ready(server: Prometheus, process: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise PrometheusError(f"prometheus exited with {process.returncode}\n{server.tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise PrometheusError(f"prometheus not ready after {timeout}s\n{server.tail()}")


@contextlib.contextmanager
def dcgm_exporter(gpus: list[dict[str, str]]) -> Iterator[int]:
    """An HTTP endpoint serving what NVIDIA's dcgm-exporter serves for `gpus` (each the labels it
    maps a GPU to: namespace, pod, container of the pod holding it); yields its port. The real
    exporter needs a GPU; its series and labels are what the dashboards must read."""
    import http.server
    import threading

    lines = ["# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).", "# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
    for index, gpu in enumerate(gpus):
        labels = {"gpu": str(index), "UUID": f"GPU-{index:08d}-0000-0000-0000-000000000000",
                  "device": f"nvidia{index}", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "gpu-node-1",
                  "DCGM_FI_DRIVER_VERSION": "550.54.15", **gpu}
        lines.append("DCGM_FI_DEV_GPU_UTIL{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + f"}} {40 + index}")
    body = ("\n".join(lines) + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def scrape(port: int, timeout: float = 3.0) -> str:
    """The text of http://127.0.0.1:port/metrics (what Prometheus would read)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return response.read().decode()


# --- dashboards -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    dashboard: str  # uid
    panel: str  # title
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref_id}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """{file name: dashboard JSON} of every helm/kt-cluster/dashboards/*.json."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included; rows themselves are left out."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_targets() -> list[Target]:
    targets = []
    for dashboard in load_dashboards().values():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    targets.append(Target(dashboard["uid"], panel["title"], target["refId"], target["expr"]))
    return targets


GRAFANA_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def grafana_expand(expr: str, values: dict[str, str], rate_interval: str = "15s") -> str:
    """Replace `$name`, `${name}` and `${name:format}` as Grafana would; builtins get test values."""
    builtins = {"__rate_interval": rate_interval, "__interval": "1s", "__range": "5m",
                "__range_s": "300", "__interval_ms": "1000"}

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name in builtins:
            return builtins[name]
        if name.isdigit():  # a label_replace back-reference: Grafana has no such variable
            return match.group(0)
        if name not in values:
            raise KeyError(f"{name}: no value for this Grafana variable in {expr!r}")
        return values[name]

    return GRAFANA_VARIABLE.sub(replace, expr)


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.S)


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    if isinstance(query, dict):
        query = query.get("query", "")
    return query or variable.get("definition", "")


# --- rules ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    name: str  # alert or record name
    kind: str  # "alert" or "record"
    expr: str
    raw: dict[str, Any]


def load_rules(path: Path = RULES) -> list[Rule]:
    rules = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            kind = "alert" if "alert" in rule else "record"
            rules.append(Rule(rule[kind], kind, rule["expr"], rule))
    return rules


# --- taking an alert expression apart ---------------------------------------------------------
#
# A healthy search must not fire any alert, so "the alert returns data" cannot be the test.
# Instead each alert is cut into the series it is built from, at its top level only:
#   - `A or B`, `A and on(x) B`, `A unless B`: A and B, each taken apart again;
#   - `X > 0.5`, `X == 0`, `3 < X` (a comparison with a number): X;
#   - `absent(X)`, `absent_over_time(X[5m])`: X;
#   - `( ... )` around the whole: what is inside.
# Every part must then return data: a part without data would keep the alert silent for good
# (a misspelt metric, a label that is never set), which is what this check is for.

_OPEN, _CLOSE = "([{", ")]}"
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$|^[+-]?(?:Inf|NaN)$", re.I)
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_SET_MODIFIER = re.compile(r"^\s*(?:on|ignoring)\s*\([^)]*\)\s*", re.S)


def _scan(expr: str) -> list[int | None]:
    """Bracket depth at each character of `expr`; None inside strings, -1 in comments."""
    depths: list[int | None] = []
    depth, quote, comment = 0, None, False
    escaped = False
    for c in expr:
        if comment:
            comment = c != "\n"
            depths.append(-1)
        elif quote:
            depths.append(None)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
            depths.append(None)
        elif c == "#":
            comment = True
            depths.append(-1)
        elif c in _OPEN:
            depths.append(depth)
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            depths.append(depth)
        else:
            depths.append(depth)
    return depths


def _top_level(expr: str) -> list[tuple[int, str]]:
    """(index, char) of the characters of `expr` outside brackets, strings and comments."""
    return [(i, c) for i, (c, d) in enumerate(zip(expr, _scan(expr))) if d == 0 and c not in _OPEN + _CLOSE]


def _encloses(expr: str) -> bool:
    """Whether `expr` starts with a bracket that closes at its last character."""
    depths = _scan(expr)
    if not expr or expr[0] not in _OPEN:
        return False
    closing = [i for i, (c, d) in enumerate(zip(expr, depths)) if c in _CLOSE and d == 0]
    return bool(closing) and closing[0] == len(expr) - 1


def _strip_comments(expr: str) -> str:
    return "".join(c for c, d in zip(expr, _scan(expr)) if d != -1)


def _unwrap(expr: str) -> str:
    expr = _strip_comments(expr).strip()
    while expr.startswith("(") and _encloses(expr):
        expr = expr[1:-1].strip()
    return expr


def _split_words(expr: str, words: tuple[str, ...]) -> list[str]:
    """Split at top-level set operators (whole words)."""
    top = dict(_top_level(expr))
    cuts, i = [], 0
    while i < len(expr):
        for word in words:
            end = i + len(word)
            if (expr[i:end].lower() == word and all(k in top for k in range(i, end))
                    and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:"))
                    and (end >= len(expr) or not (expr[end].isalnum() or expr[end] in "_:"))):
                cuts.append((i, end))
                i = end
                break
        else:
            i += 1
    if not cuts:
        return [expr]
    parts, start = [], 0
    for begin, end in cuts:
        parts.append(expr[start:begin])
        start = end
    parts.append(expr[start:])
    return [_SET_MODIFIER.sub("", part, count=1).strip() for part in parts]


def _split_comparison(expr: str) -> list[str] | None:
    """`X op number` or `number op X` -> [X]; `X op Y` -> [X, Y]; None without a top-level comparison."""
    top = _top_level(expr)
    text = "".join(c for _, c in top)
    positions = [i for i, _ in top]
    match = None
    for m in _COMPARISON.finditer(text):
        match = m  # the last one: comparisons are left-associative
    if match is None:
        return None
    begin, end = positions[match.start()], positions[match.end() - 1] + 1
    left, right = expr[:begin].strip(), expr[end:].strip()
    right = re.sub(r"^bool\b", "", right).strip()
    if _NUMBER.match(right):
        return [left]
    if _NUMBER.match(left):
        return [right]
    return [left, right]


def probes(expr: str) -> list[str]:
    """The parts of an alert expression that must each return data (see the comment above)."""
    expr = _unwrap(expr)
    for words in (("or",), ("and", "unless")):
        parts = _split_words(expr, words)
        if len(parts) > 1:
            return [p for part in parts for p in probes(part)]
    compared = _split_comparison(expr)
    if compared is not None:
        return [p for part in compared for p in probes(part)]
    absent = re.match(r"^absent(_over_time)?\s*\((.*)\)$", expr, re.S)
    if absent and _encloses(expr[len("absent" + (absent.group(1) or "")):].strip()):
        inner = absent.group(2).strip()
        if absent.group(1):
            inner = re.sub(r"\[[^\]]*\]\s*$", "", inner).strip()
        return probes(inner)
    return [expr]
