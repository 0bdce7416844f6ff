"""Typed errors: every failed call raises a :class:`ChatEngineError` subclass chosen by its
gRPC status code, with the server's rich details (``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer) read into plain attributes."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (e.g. ``"text"``) and why it was refused."""

    field: str
    description: str


class ChatEngineError(Exception):
    """A call the server (or the transport) refused.

    ``code`` is the :class:`grpc.StatusCode`, ``message`` the server's message, ``reason``
    the ``google.rpc.ErrorInfo`` reason when one was sent (e.g. ``"RESYNC_REQUIRED"``).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "", metadata: dict[str, str] | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}


class InvalidArgument(ChatEngineError):
    """INVALID_ARGUMENT; ``field_violations`` names each bad field (``google.rpc.BadRequest``)."""

    def __init__(self, code, message, *, field_violations: list[FieldViolation], **kw):
        super().__init__(code, message, **kw)
        self.field_violations = field_violations

    @property
    def fields(self) -> list[str]:
        """The names of the invalid fields."""
        return [v.field for v in self.field_violations]


class Unauthenticated(ChatEngineError):
    """UNAUTHENTICATED: missing, expired or revoked credentials, or a wrong password."""


class PermissionDenied(ChatEngineError):
    """PERMISSION_DENIED: e.g. a widget key used from an origin it does not allow."""


class NotFound(ChatEngineError):
    """NOT_FOUND: the object does not exist or belongs to someone else."""


class AlreadyExists(ChatEngineError):
    """ALREADY_EXISTS: e.g. a request_id reused with another payload."""


class FailedPrecondition(ChatEngineError):
    """FAILED_PRECONDITION: the object is not in a state that allows the call."""


class RateLimited(ChatEngineError):
    """RESOURCE_EXHAUSTED; ``retry_after`` is the server's ``google.rpc.RetryInfo`` delay in
    seconds (None when it sent none, e.g. for an oversized message)."""

    def __init__(self, code, message, *, retry_after: float | None, **kw):
        super().__init__(code, message, **kw)
        self.retry_after = retry_after


class Unavailable(ChatEngineError):
    """UNAVAILABLE: the server could not be reached or is shutting down; safe to retry."""


_BY_CODE: dict[grpc.StatusCode, type[ChatEngineError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    trailers = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == _DETAILS_KEY:
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a garbled trailer must not hide the original error
                return None
            return status
    return None


def from_rpc_error(err: grpc.RpcError) -> ChatEngineError:
    """The typed error for a failed call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or ""
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    reason, metadata = "", {}
    status = _rich_status(err)
    for any_ in status.details if status else ():
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            any_.Unpack(info)
            retry_after = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        elif any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
    kw = {"reason": reason, "metadata": metadata}
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(code, message, field_violations=violations, **kw)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(code, message, retry_after=retry_after, **kw)
    return _BY_CODE.get(code, ChatEngineError)(code, message, **kw)
