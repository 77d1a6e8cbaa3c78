"""The `/metrics` endpoint of the chief and the workers: a small HTTP server that cannot be held.

prometheus_client's `start_http_server` serves each connection on a thread of its own, with no
timeouts: a few hundred clients that open a connection and send nothing hold a few hundred threads
for ever, and every concurrent scrape renders the whole exposition again (on the chief, under the
oracle's lock, between its RPCs). This server runs on one asyncio event loop in a thread of its own:
- a client gets `READ_TIMEOUT_SECONDS` to send its request head (at most `MAX_HEAD_BYTES`) and
  `WRITE_TIMEOUT_SECONDS` to take the reply; then its connection is closed;
- at most `MAX_CONNECTIONS` connections are open at once; the next ones are closed at once;
- the exposition is rendered at most once per `RENDER_INTERVAL_SECONDS`; concurrent scrapers get
  the same text (Prometheus scrapes every 15 s or more: a second's age changes nothing);
- replies are paced to `MAX_REPLIES_PER_SECOND` (requests beyond it wait their turn, or get 429
  when that would outlast the read timeout), so a client that scrapes in a loop costs the process
  a bounded share of its CPU, and the chief's RPCs keep their latency.
Only `GET /metrics` (and `/`) is served, one request per connection (`Connection: close`).

A process that ends with its work (a worker told that the search is over, a chief that does not
linger) can wait for one last scrape (`wait_for_scrape`): Prometheus reads a counter only when it
scrapes, so an increment made just before the exit would otherwise never reach it. The kubelet's
HTTP probes (`User-Agent: kube-probe/...`) get the same reply but are not scrapes: nothing of
what they read is kept.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("ktc.metrics")

READ_TIMEOUT_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 256
MAX_HEAD_BYTES = 8 * 1024
RENDER_INTERVAL_SECONDS = 1.0
MAX_REPLIES_PER_SECOND = 50.0
STOP_POLL_SECONDS = 0.2  # how soon `wait_for_scrape` sees its stop event set


def _from_a_probe(head: bytes) -> bool:
    """Whether a request comes from the kubelet's HTTP probe, by the User-Agent it always sends."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"user-agent":
            return value.strip().lower().startswith(b"kube-probe/")
    return False


class MetricsServer:
    """Serves `registry` on `port` until `stop()`; `port` is the bound port (0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, port: int, address: str = "0.0.0.0",
                 max_connections: int = MAX_CONNECTIONS, read_timeout: float = READ_TIMEOUT_SECONDS,
                 write_timeout: float = WRITE_TIMEOUT_SECONDS,
                 render_interval: float = RENDER_INTERVAL_SECONDS, max_replies_per_second: float = MAX_REPLIES_PER_SECOND,
                 render: Callable[[CollectorRegistry], bytes] = generate_latest):
        self._registry = registry
        self._render = render
        self._max_connections = max_connections
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._render_interval = render_interval
        self._reply_interval = 1.0 / max_replies_per_second
        self._next_reply = 0.0  # monotonic time of the next free reply slot
        self._open = 0
        self._body: bytes | None = None
        self._rendered_at = 0.0
        # The render time of the newest exposition a scraper was sent whole; waited on by
        # `wait_for_scrape` in another thread.
        self._read_at = float("-inf")
        self._scraped = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="metrics-http", daemon=True)
        self._thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._serve, address, port, limit=MAX_HEAD_BYTES, backlog=128),
                self._loop).result(30)
        except BaseException:
            self._close_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def open_connections(self) -> int:
        return self._open

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self._max_connections:
            writer.transport.abort()  # over the cap: no reply, nothing held
            return
        self._open += 1
        # No write buffer allowance: drain() returns once the whole reply is with the kernel, so the
        # write timeout covers all of it, and a reader that stops reading is cut off, not buffered for.
        writer.transport.set_write_buffer_limits(high=0)
        sent = False
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._read_timeout)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return  # silent, too slow, too large or gone: nothing to answer
            wait = self._reply_slot()
            if wait is None:
                status, body, content_type = b"429 Too Many Requests", b"too many scrapes\n", b"text/plain"
            else:
                await asyncio.sleep(wait)
                status, body, content_type = self._answer(head)
            # Read before the next await: another scrape may render a newer exposition meanwhile.
            scrape = status == b"200 OK" and body and not _from_a_probe(head)
            exposition_at = self._rendered_at if scrape else None
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, content_type, len(body)) + body)
            await asyncio.wait_for(writer.drain(), self._write_timeout)
            sent = True
            if exposition_at is not None:
                self._note_scrape(exposition_at)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Only `stop()` cancels a handler. Ending normally rather than cancelled matters: the
            # stream's done-callback asks the task for its exception, which raises if it was cancelled.
            pass
        finally:
            self._open -= 1
            if sent:
                writer.close()  # one request per connection
            else:
                writer.transport.abort()  # nothing to send, or a reader that does not read

    def _reply_slot(self) -> float | None:
        """Seconds to wait for this request's turn, or None when it would outlast the read timeout."""
        now = time.monotonic()
        slot = max(now, self._next_reply)
        if slot - now > self._read_timeout:
            return None
        self._next_reply = slot + self._reply_interval
        return slot - now

    def _answer(self, head: bytes) -> tuple[bytes, bytes, bytes]:
        request_line = head.split(b"\r\n", 1)[0].split()
        if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/"):
            return b"400 Bad Request", b"bad request\n", b"text/plain"
        method, target = request_line[0], request_line[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", b"only GET\n", b"text/plain"
        if target not in (b"/metrics", b"/"):
            return b"404 Not Found", b"see /metrics\n", b"text/plain"
        try:
            body = self._exposition()
        except Exception as exc:  # noqa: BLE001 - a collector's bug fails this scrape, not the server
            log.error("rendering /metrics failed: %s: %s", type(exc).__name__, exc)
            return b"500 Internal Server Error", b"rendering failed; see the log\n", b"text/plain"
        return b"200 OK", b"" if method == b"HEAD" else body, CONTENT_TYPE_LATEST.encode()

    def _exposition(self) -> bytes:
        now = time.monotonic()
        if self._body is None or now - self._rendered_at >= self._render_interval:
            self._body = self._render(self._registry)
            self._rendered_at = now
        return self._body

    def _note_scrape(self, rendered_at: float) -> None:
        with self._scraped:
            self._read_at = max(self._read_at, rendered_at)
            self._scraped.notify_all()

    def wait_for_scrape(self, since: float, timeout: float, stop: threading.Event | None = None) -> bool:
        """True once a scraper has been sent an exposition rendered at or after `since` (a
        `time.monotonic()` time), so it read every value as it stood then; False after `timeout`
        seconds, or as soon as `stop` is set."""
        deadline = time.monotonic() + timeout
        with self._scraped:
            while self._read_at < since:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._scraped.wait(min(left, STOP_POLL_SECONDS))
            return True

    def wait_for_final_scrape(self, seconds: float, stop: threading.Event | None = None,
                              since: float | None = None) -> bool:
        """Keep serving until a scrape has read the values as they stood at `since` (default: now),
        at most `seconds`; say so in the log."""
        log.info("serving /metrics for a last scrape (at most %.0f s)", seconds)
        scraped = self.wait_for_scrape(time.monotonic() if since is None else since, seconds, stop)
        log.info("last scrape %s", "served" if scraped else "not served: none came")
        return scraped

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            # Connections still open (a scraper between requests) end here, while the loop runs:
            # a handler left pending would be destroyed with the loop, and say so on stderr.
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await self._server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        except Exception:  # noqa: BLE001 - stopping: the loop goes anyway
            log.debug("metrics server did not close cleanly", exc_info=True)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
