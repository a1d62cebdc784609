"""Waiting for a condition with a deadline: the one helper the tests and benchmarks poll with.

Never sleep a fixed time and hope: poll the condition, and fail at the deadline saying what
was awaited. A timeout raises `TimedOutError`, which is both an AssertionError (a test fails, and
a test's own `except AssertionError` still catches it) and a RuntimeError (what a benchmark
catches). Nothing here starts or stops a process.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TimedOutError(AssertionError, RuntimeError):
    """A condition did not come true before its deadline."""


def wait_for(
    pred: Callable[[], Any], timeout: float, what: str = "condition", every: float = 0.05
) -> Any:
    """Poll `pred` until it returns something truthy (returned); `TimedOutError` at the deadline.

    `pred` may raise to give up early (a peer that exited will not come up).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimedOutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


async def eventually(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float,
    what: str = "condition",
    every: float = 0.05,
) -> Any:
    """`wait_for` inside an event loop: `check` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimedOutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)


def wait_quiet(
    observe: Callable[[], T],
    quiet: float,
    timeout: float,
    *,
    until: Callable[[T], bool] | None = None,
    every: float = 0.05,
) -> bool:
    """Wait until `observe()` has not changed for `quiet` seconds (and `until` holds for it).

    True when it went quiet; False at `timeout` (not an error: a stream that never stops is
    what the caller reports).
    """
    deadline = time.monotonic() + timeout
    last, since = observe(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(every)
        now = observe()
        if now != last:
            last, since = now, time.monotonic()
        elif (until is None or until(now)) and time.monotonic() - since >= quiet:
            return True
    return False
