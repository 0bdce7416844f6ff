"""The channel, the retry policy and the one place unary calls go through: credentials are
attached per attempt, UNAVAILABLE is retried with backoff and jitter for calls that are safe
to repeat, and every failure leaves as a typed error (:mod:`chat_engine_sdk.errors`)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import grpc

from .errors import ChatEngineError, from_rpc_error

Metadata = Sequence[tuple[str, str]]

# Reconnect quickly after a dropped connection (gRPC's own defaults start at 1 s and grow to
# 2 min), and notice a dead connection within a minute even when nothing is sent on it.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
]


@dataclass(frozen=True)
class RetryPolicy:
    """How calls and streams retry: ``attempts`` tries per unary call (1 = no retry), waits
    of random length up to ``base * 2**n`` seconds, never above ``cap`` ("full jitter")."""

    attempts: int = 5
    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """How long to wait before retry number ``attempt`` (0-based)."""
        return random.uniform(0, min(self.cap, self.base * (2**attempt)))


def open_channel(target: str, *, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel to ``target``: ``host:port`` or ``http://host:port`` in the clear,
    ``https://host[:port]`` (or any target with ``credentials``) over TLS."""
    secure = credentials is not None
    if target.startswith("https://"):
        target, secure = target[len("https://"):], True
    elif target.startswith("http://"):
        target = target[len("http://"):]
    target = target.rstrip("/")
    if secure:
        if ":" not in target:
            target += ":443"
        return grpc.secure_channel(target, credentials or grpc.ssl_channel_credentials(), _CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, _CHANNEL_OPTIONS)


class Caller:
    """Runs unary calls with fresh metadata per attempt and the retry policy."""

    def __init__(self, metadata: Callable[[], Metadata], retry: RetryPolicy, timeout: float | None,
                 sleep: Callable[[float], None] = time.sleep):
        self._metadata = metadata
        self._retry = retry
        self._timeout = timeout
        self._sleep = sleep

    def __call__(self, method, request, *, retry: bool = False, metadata: Callable[[], Metadata] | None = None):
        """Calls ``method`` (a generated stub attribute). ``retry`` says the call is safe to
        repeat (idempotent or carrying a request_id); only then is UNAVAILABLE retried."""
        attempts = self._retry.attempts if retry else 1
        for attempt in range(attempts):
            try:
                return method(request, metadata=(metadata or self._metadata)(), timeout=self._timeout)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
                if err.code != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                    raise err from None
            self._sleep(self._retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["Caller", "ChatEngineError", "Metadata", "RetryPolicy", "open_channel"]
