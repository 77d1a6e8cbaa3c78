"""A process that ends with its search waits for one last scrape: `MetricsServer.wait_for_scrape`
returns once a scraper was sent the values as they stood at a moment, and only then."""

import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from kt_cluster.core.metrics_http import MetricsServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def served():
    """A counter on a served registry; the exposition re-rendered at most every 30 s, as a server
    under scrape load would serve a cached one."""
    registry = CollectorRegistry()
    counter = Counter("ktc_test_trials", "Trials.", registry=registry)
    server = MetricsServer(registry, 0, address="127.0.0.1", render_interval=30.0)
    try:
        yield server, counter
    finally:
        server.stop()


def scrape(port: int, method: str = "GET", user_agent: str = "Prometheus/2.45.0") -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method=method,
                                     headers={"User-Agent": user_agent})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read().decode()


def scrape_later(port: int, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), scrape(port)), daemon=True)
    thread.start()
    return thread


def test_the_first_scrape_after_the_mark_ends_the_wait_with_the_final_value(served):
    server, counter = served
    counter.inc()
    mark = time.monotonic()
    scraper = scrape_later(server.port, 0.3)
    started = time.monotonic()
    assert server.wait_for_scrape(mark, timeout=30)
    assert time.monotonic() - started < 10
    scraper.join(10)
    assert "ktc_test_trials_total 1.0" in scrape(server.port)


def test_an_exposition_rendered_before_the_mark_is_not_the_final_one(served):
    server, counter = served
    assert "ktc_test_trials_total 0.0" in scrape(server.port)  # rendered now, cached for 30 s
    counter.inc()
    mark = time.monotonic()
    assert "ktc_test_trials_total 0.0" in scrape(server.port), "the cached exposition, without the increment"
    assert not server.wait_for_scrape(mark, timeout=0.5)


def test_kubelet_probes_and_head_requests_are_not_scrapes(served):
    server, _ = served
    mark = time.monotonic()
    assert "ktc_test_trials_total" in scrape(server.port, user_agent="kube-probe/1.31")
    assert scrape(server.port, method="HEAD") == ""
    assert not server.wait_for_scrape(mark, timeout=0.5)


def test_without_a_scrape_the_wait_ends_at_its_timeout(served):
    server, _ = served
    started = time.monotonic()
    assert not server.wait_for_scrape(time.monotonic(), timeout=0.6)
    assert 0.5 <= time.monotonic() - started < 5


def test_the_stop_event_ends_the_wait_at_once(served):
    server, _ = served
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert not server.wait_for_scrape(time.monotonic(), timeout=60, stop=stop)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("command", ["chief", "worker", "local"])
@pytest.mark.parametrize("value", ["-5", "nan", "soon"])
def test_a_bad_final_scrape_duration_is_refused_naming_the_flag(command, value):
    out = subprocess.run([sys.executable, "-m", "kt_cluster", command, "--final-scrape-seconds", value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].startswith(f"ktc {command}: error: argument --final-scrape-seconds: ")
