"""Real HTTP receivers on loopback for outbound webhook tests: each is a threaded http.server
that records every request and answers as its ``behave`` callable says."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool | None = None
    error: str = ""

    @property
    def msg_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


# (received, index) -> (status, headers, body); may sleep to hang.
Behave = Callable[[Received, int], tuple[int, dict[str, str], bytes]]


def ok(received: Received, index: int) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b'{"ok":true}'


@dataclass
class Receiver:
    behave: Behave = ok
    secrets: list[str] = field(default_factory=list)  # verify with any of these
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Answer without waiting for delayed ACKs (headers and body are two writes).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                received = Received(
                    headers={k.lower(): v for k, v in self.headers.items()}, body=body
                )
                if receiver.secrets:
                    received.verified = False
                    for secret in receiver.secrets:
                        try:
                            Webhook(secret).verify(body, received.headers)
                        except WebhookVerificationError as exc:
                            received.error = str(exc)
                        else:
                            received.verified, received.error = True, ""
                            break
                index = len(receiver.requests)
                receiver.requests.append(received)
                status, headers, out = receiver.behave(received, index)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client gave up (timeout, killed worker)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait_for(self, count: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver got {len(self.requests)} of {count} requests")
            time.sleep(0.01)

    def types(self) -> list[str]:
        return [r.json()["type"] for r in self.requests]
