"""Run a call with a wall-clock limit, so that a hanging reward function cannot stall a run."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class CallTimeout(Exception):
    pass


def call_with_timeout(fn: Callable[..., Any], timeout_s: float, /, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), or CallTimeout after timeout_s.

    In the main thread (a Ray actor's methods run there) SIGALRM interrupts the call itself;
    elsewhere the call runs in a daemon thread that is abandoned on timeout.
    """
    if threading.current_thread() is threading.main_thread():
        return _with_alarm(fn, timeout_s, args, kwargs)
    return _with_thread(fn, timeout_s, args, kwargs)


def _with_alarm(fn, timeout_s, args, kwargs):
    def on_alarm(signum, frame):
        raise CallTimeout(f"exceeded {timeout_s}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _with_thread(fn, timeout_s, args, kwargs):
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise CallTimeout(f"exceeded {timeout_s}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
