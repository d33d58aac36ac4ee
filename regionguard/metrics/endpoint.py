"""The metrics endpoint: a small HTTP server in a daemon thread, off the front end's event loop
(a scrape renders every family; the loop keeps answering meanwhile).

    /metrics   Prometheus text format, from the front end's registry
    /healthz   200 while the process runs
    /readyz    200 when `ready()` says so (a policy loaded and the listener up), else 503 and why
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class MetricsEndpoint:
    """Serves `registry` on (host, port) once `start()` is called, until `stop()`.
    `ready()` returns None when ready, else why not (the 503's body)."""

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 ready: Callable[[], str | None]) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve. Raises OSError when the address cannot be bound."""
        host, port = self.address
        endpoint = self

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                endpoint.handle(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass   # a scrape every few seconds is not worth a log line

        self._server = Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="regionguard-metrics")
        self._thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, ctype = 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            status, body, ctype = 200, b"ok\n", "text/plain; charset=utf-8"
        elif path == "/readyz":
            try:
                problem = self.ready()
            except Exception as e:  # noqa: BLE001 - a failing check means not ready
                problem = f"readiness check failed: {e}"
            status = 200 if problem is None else 503
            body = b"ready\n" if problem is None else f"not ready: {problem}\n".encode()
            ctype = "text/plain; charset=utf-8"
        else:
            status, body, ctype = 404, b"not found: try /metrics, /healthz, /readyz\n", \
                "text/plain; charset=utf-8"
        request.send_response(status)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
