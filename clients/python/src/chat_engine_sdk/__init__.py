"""chat-engine's Python SDK: a visitor client (the website chat flow), an agent client
(login with refresh, the queue, messages), a resuming event stream, and typed errors.

The generated protobuf and gRPC modules are under :mod:`chat_engine_sdk.pb`
(``chat_engine_sdk.pb.chatengine.v1``, and the operator-only ``chatengine.admin.v1``).
"""

from ._transport import RetryPolicy
from .agent import AgentClient
from .errors import (
    AlreadyExists, ChatEngineError, FailedPrecondition, FieldViolation, InvalidArgument, NotFound,
    PermissionDenied, RateLimited, Unauthenticated, Unavailable,
)
from .stream import StreamItem, Subscription
from .visitor import Chat, VisitorClient

__all__ = [
    "AgentClient", "AlreadyExists", "Chat", "ChatEngineError", "FailedPrecondition", "FieldViolation",
    "InvalidArgument", "NotFound", "PermissionDenied", "RateLimited", "RetryPolicy", "StreamItem",
    "Subscription", "Unauthenticated", "Unavailable", "VisitorClient",
]
__version__ = "0.1.0"
