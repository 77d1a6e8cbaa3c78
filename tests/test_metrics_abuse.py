"""/metrics under abuse, against a real chief process: half-open connections time out without
holding threads, and concurrent scrapers cost the chief's RPCs no more than one scrape does."""

import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import uuid

import grpc
import pytest

from harness import TOKEN
from kt_cluster.core import compat, metrics_http, protocol

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    from harness import running_chief

    with running_chief(tmp_path_factory.mktemp("metrics-abuse"), {"max_trials": 10_000, "space": {"start_neurons": {"min": 8, "max": 100_000, "step": 1}}}) as c:
        yield c


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_half_open_connections_time_out_and_hold_no_thread(chief):
    pid = chief.procs["chief"].pid
    before = threads_of(pid)
    held = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", chief.chief_metrics_port), timeout=10)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        held.append(sock)
    try:
        assert "ktc_chief_trials" in chief.scrape(chief.chief_metrics_port), "a scrape must still be served"
        assert threads_of(pid) <= before + 2, "each held connection must not hold a thread"
        deadline = time.monotonic() + metrics_http.READ_TIMEOUT_SECONDS + 10
        closed = 0
        for sock in held:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += sock.recv(1024) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                break
        assert closed == len(held), f"only {closed} of {len(held)} half-open connections were closed by the chief"
    finally:
        for sock in held:
            sock.close()
    assert "ktc_chief_trials" in chief.scrape(chief.chief_metrics_port)


class Trials:
    """Normal trials (CreateTrial, UpdateTrial, EndTrial) over one channel, timed."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.stub = compat.oracle_stub_class()(self.channel)
        self.messages = compat.oracle_messages()
        self.tuner_id = f"latency-{uuid.uuid4().hex[:6]}"
        self.metadata = [(protocol.AUTHORIZATION, f"Bearer {TOKEN}"), (protocol.SESSION, uuid.uuid4().hex),
                         (protocol.TUNER_ID, self.tuner_id)]

    def one(self) -> float:
        m, start = self.messages, time.perf_counter()
        trial = self.stub.CreateTrial(m.CreateTrialRequest(tuner_id=self.tuner_id), metadata=self.metadata, timeout=10).trial
        self.stub.UpdateTrial(m.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"val_f1": 0.5}, step=0),
                              metadata=self.metadata, timeout=10)
        trial.status = compat.status_proto("COMPLETED")
        self.stub.EndTrial(m.EndTrialRequest(trial=trial), metadata=self.metadata, timeout=10)
        return time.perf_counter() - start

    def p50(self, count: int) -> float:
        return statistics.median(self.one() for _ in range(count))


SCRAPERS = textwrap.dedent("""
    import os, signal, sys, threading, time, urllib.request
    url, count = sys.argv[1], [0]
    signal.signal(signal.SIGTERM, lambda *_: (print(count[0], flush=True), os._exit(0)))
    def scrape():
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                count[0] += 1
            except OSError:
                time.sleep(0.1)
    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(16)]
    [t.start() for t in threads]
    time.sleep(float(sys.argv[2]))
""")


def test_concurrent_scrapers_cost_rpcs_no_more_than_one_scrape(chief):
    trials = Trials(chief.address)
    trials.p50(5)  # warm up
    # The scrapers run in a process of their own (in this one they would take the timed client's GIL),
    # paused and resumed in alternating blocks of trials: load from outside this test, which drifts
    # over seconds on a shared machine, falls on both sides alike.
    scrapers = subprocess.Popen([sys.executable, "-c", SCRAPERS,
                                 f"http://127.0.0.1:{chief.chief_metrics_port}/metrics", "120"],
                                stdout=subprocess.PIPE, text=True)
    quiet, loaded = [], []
    try:
        time.sleep(1.0)
        for block in range(8):
            scraping = block % 2 == 0
            scrapers.send_signal(signal.SIGCONT if scraping else signal.SIGSTOP)
            time.sleep(0.2)
            (loaded if scraping else quiet).extend(trials.one() for _ in range(10))
        scrapers.send_signal(signal.SIGCONT)
        time.sleep(0.2)  # resumed before it is told to report: a SIGTERM right behind SIGCONT can be lost
        scrapers.terminate()
        served = int(scrapers.communicate(timeout=30)[0])
    finally:
        scrapers.kill()
        scrapers.wait()
    alone, with_scrapers = statistics.median(quiet), statistics.median(loaded)
    print(f"normal trial p50: {alone * 1000:.1f} ms alone, {with_scrapers * 1000:.1f} ms with 16 scrapers "
          f"({served} scrapes)")
    assert served > 16, "the scrapers did not scrape"
    # One render per interval for all scrapers, replies paced; before, each scrape rendered the
    # exposition under the oracle's lock: 5 -> 30 ms measured the same way on this 2-core machine.
    assert with_scrapers < 2 * alone + 0.004, f"p50 {alone * 1000:.1f} ms -> {with_scrapers * 1000:.1f} ms"


def test_only_get_metrics_is_served_and_a_bad_request_is_refused(chief):
    port = chief.chief_metrics_port
    for request, status in ((b"POST /metrics HTTP/1.1\r\n\r\n", b"405"), (b"GET /secret HTTP/1.1\r\n\r\n", b"404"),
                            (b"garbage\r\n\r\n", b"400")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            assert sock.recv(64).split()[1] == status, request
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a head over the limit
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics_http.MAX_HEAD_BYTES + 10))
        sock.settimeout(10)
        try:
            assert sock.recv(64) == b""
        except ConnectionResetError:
            pass
    assert os.path.exists(f"/proc/{chief.procs['chief'].pid}")


def big_registry(lines: int):
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauge = Gauge("padding", "Many series, for a large reply.", ["n"], registry=registry)
    for n in range(lines):
        gauge.labels(n=str(n)).set(n)
    return registry


def http_get(port: int, read_slowly: bool = False) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            if read_slowly:
                time.sleep(0.001)
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_a_large_reply_reaches_a_slow_reader_whole():
    server = metrics_http.MetricsServer(big_registry(20_000), 0, address="127.0.0.1")
    try:
        head, body = http_get(server.port, read_slowly=True)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        assert b" 200 " in head.split(b"\r\n")[0] and len(body) == length > 500_000
    finally:
        server.stop()


def test_scrapes_beyond_the_pace_wait_their_turn_or_get_429():
    server = metrics_http.MetricsServer(big_registry(1), 0, address="127.0.0.1", read_timeout=0.5,
                                        max_replies_per_second=1.0)
    try:
        statuses = [http_get(server.port)[0].split(b"\r\n")[0].split()[1] for _ in range(3)]
        assert statuses[0] == b"200" and b"429" in statuses[1:], statuses
    finally:
        server.stop()


def test_stopping_with_scrapers_connected_ends_their_handlers_quietly():
    """A process that stops its metrics server while a scraper holds a connection open (one that
    has not sent its request yet, one waiting for its turn) exits without asyncio's complaints."""
    script = textwrap.dedent("""
        import gc, socket, time
        from prometheus_client import CollectorRegistry
        from kt_cluster.core.metrics_http import MetricsServer
        server = MetricsServer(CollectorRegistry(), 0, address="127.0.0.1", max_replies_per_second=0.25)
        idle = socket.create_connection(("127.0.0.1", server.port))
        scrapers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        for scraper in scrapers:
            scraper.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        time.sleep(0.5)  # the first scrape is answered, the second waits 4 s for its turn
        assert server.open_connections == 2, server.open_connections
        server.stop()
        del server
        gc.collect()
        print("stopped")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "stopped", run.stderr
    assert run.stderr == "", run.stderr
