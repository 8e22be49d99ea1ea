"""Run test code in real OS processes against the test database (PostgreSQL).

Children are forked after the parent closed its connections, so each opens its own
connection to the test database (Django already points ``settings_dict`` at it)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections

_ctx = mp.get_context("fork")


def _child(target: Callable[..., Any], args: tuple[Any, ...], queue: Any) -> None:
    connections.close_all()
    try:
        queue.put(("ok", target(*args)))
    except BaseException as exc:  # report everything to the parent
        import traceback

        queue.put(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        connections.close_all()


def start(target: Callable[..., Any], *args: Any) -> tuple[mp.Process, Any]:
    """Starts one child; returns the process and a queue that receives ("ok", result)."""
    connections.close_all()
    queue = _ctx.Queue()
    proc = _ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    return proc, queue


def run_all(
    target: Callable[..., Any], arg_list: Sequence[tuple[Any, ...]], timeout: float = 120
) -> list[Any]:
    """Runs ``target(*args)`` in one process per entry, in parallel; returns the results in
    order, and raises if any child failed or did not finish."""
    started = [start(target, *args) for args in arg_list]
    results = []
    for proc, queue in started:
        status, value = queue.get(timeout=timeout)
        proc.join(timeout=timeout)
        if status != "ok":
            raise AssertionError(f"child process failed: {value}")
        results.append(value)
    return results
