"""A real gunicorn process on loopback, for benchmarks and end-to-end tests."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gunicorn_start(
    *,
    port: int,
    workers: int = 2,
    threads: int = 1,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.Popen[bytes]:
    """Starts gunicorn with Neruba on 127.0.0.1:port and waits until /healthz answers."""
    full_env = {
        **os.environ,
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "NERUBA_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        **(env or {}),
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(  # noqa: S603 - our own executable and fixed arguments
        [
            str(gunicorn),
            "neruba.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(threads),
            "--keep-alive",
            "30",
            "--backlog",
            "2048",
            "--log-level",
            "warning",
        ],
        cwd=settings.BASE_DIR,
        env=full_env,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    gunicorn_stop(proc)
    raise RuntimeError("gunicorn did not start (see its output above)")


def gunicorn_stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def gunicorn_server(
    *, workers: int = 2, threads: int = 1, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """``with gunicorn_server(env=...) as base_url:`` — stopped on exit, whatever happens."""
    port = free_port()
    proc = gunicorn_start(port=port, workers=workers, threads=threads, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        gunicorn_stop(proc)
