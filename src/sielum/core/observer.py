"""The call observer: what every transport reports of each call it answered (metrics, logs)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

CallObserver = Callable[[str, grpc.StatusCode, float], None]
"""Told of every call answered: full method name, status code, seconds it took.

The status is grpc's code on every transport: the dashboard maps Connect's codes
back to it, so one metric counts a method's calls whichever door they came through.
"""


def observe_nothing(method: str, code: grpc.StatusCode, seconds: float) -> None:
    """The observer when metrics are off."""


CallStarted = Callable[[str], None]
"""Told of every call as it arrives, before it is authorized: its full method name."""


def start_nothing(method: str) -> None:
    """The start observer when metrics are off."""
