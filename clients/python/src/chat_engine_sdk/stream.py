"""A resuming event stream: iterates the ``StreamItem``s of ``Subscribe`` or
``SubscribeVisitor`` and survives dropped connections and server restarts.

It keeps the last delivered ``seq`` per conversation. When the stream breaks (connection
lost, the server's ``Resync`` and ABORTED, a node shutting down) it subscribes again with
those cursors after a backoff with jitter; the server replays what was missed, and any event
at or below a cursor is dropped, so every durable event comes out exactly once, in seq
order per conversation. Ephemeral items (typing, presence, queue position, caught_up) are
passed through as they come; a reconnect yields a new ``caught_up`` after its replay.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import grpc

from .errors import ChatEngineError, from_rpc_error
from ._transport import RetryPolicy
from .pb.chatengine.v1 import conversation_pb2

StreamItem = conversation_pb2.StreamItem

# Codes after which subscribing again is the cure: the transport broke, or the server ended
# the stream on purpose (Resync comes with ABORTED; a node shutting down may say UNAVAILABLE).
_RECONNECT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}

# Opens a stream from the given cursors; returns the gRPC response iterator (which has cancel()).
Opener = Callable[[dict[str, int]], "grpc.Future"]


class Subscription(Iterator[StreamItem]):
    """Iterate it for ``StreamItem``s; :meth:`close` (or leaving a ``with`` block) ends it.

    ``cursors`` maps conversation id to the last seq already seen (0 replays everything);
    conversations without a cursor start live. ``on_unauthenticated`` may renew credentials
    and return True to have the stream retried once. With ``only``, items of other
    conversations are left out (their cursors still advance).
    """

    def __init__(self, opener: Opener, cursors: dict[str, int] | None = None, *,
                 retry: RetryPolicy | None = None,
                 on_unauthenticated: Callable[[], bool] | None = None,
                 only: str | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self._open = opener
        self._cursors: dict[str, int] = dict(cursors or {})
        self._retry = retry or RetryPolicy()
        self._renew = on_unauthenticated
        self._only = only
        self._sleep = sleep
        self._call = None
        self._failures = 0
        self._renewed = False
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.reconnects = 0
        """How many times the stream was opened again after a break."""

    @property
    def cursors(self) -> dict[str, int]:
        """The last seq delivered per conversation (a copy): what a resume starts from."""
        with self._lock:
            return dict(self._cursors)

    def close(self) -> None:
        """Ends the stream; a blocked iteration stops with StopIteration."""
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> "Subscription":
        return self

    def __next__(self) -> StreamItem:
        while True:
            if self._closed.is_set():
                raise StopIteration
            if self._call is None:
                try:
                    self._call = self._open(self.cursors)
                except ChatEngineError as err:
                    # Renewing credentials on the way may meet the same broken network.
                    if err.code not in _RECONNECT:
                        raise
                    self._broken()
                    continue
                if self._closed.is_set():  # closed while opening: cancel what we just opened
                    self._call.cancel()
            try:
                response = next(self._call)
            except StopIteration:
                # The server ended the stream without an error; resume as after a break.
                self._broken()
                continue
            except grpc.RpcError as e:
                if self._closed.is_set():
                    raise StopIteration from None
                err = from_rpc_error(e)
                if err.code == grpc.StatusCode.UNAUTHENTICATED and self._renew and not self._renewed:
                    self._renewed = True
                    try:
                        renewed = self._renew()
                    except ChatEngineError as renew_err:
                        # The refresh itself met a broken network: retry the whole thing.
                        if renew_err.code not in _RECONNECT:
                            raise
                        self._renewed = False
                        self._broken()
                        continue
                    if renewed:
                        self._call = None
                        continue
                if err.code not in _RECONNECT:
                    self._call = None
                    raise err from None
                self._broken()
                continue
            self._failures = 0
            self._renewed = False
            item = self._accept(response.item)
            if item is not None and (self._only is None or _conversation_of(item) in ("", self._only)):
                return item

    def _broken(self) -> None:
        self._call = None
        if self._closed.is_set():
            return
        self._sleep(self._retry.delay(min(self._failures, 16)))
        self._failures += 1
        self.reconnects += 1

    def _accept(self, item: StreamItem) -> StreamItem | None:
        """Advances the cursors; None for an event already delivered."""
        kind = item.WhichOneof("kind")
        with self._lock:
            if kind == "event":
                conv, seq = item.event.conversation_id, item.event.seq
                if seq <= self._cursors.get(conv, 0):
                    return None
                self._cursors[conv] = seq
            elif kind == "joined":
                # Joined is followed by the events from the join on; should the stream break
                # before the first of them, a resume from 0 replays rather than loses them.
                self._cursors.setdefault(item.joined.conversation.id, 0)
            elif kind == "resync":
                for c in item.resync.cursors:
                    self._cursors[c.conversation_id] = max(self._cursors.get(c.conversation_id, 0), c.last_seq)
        return item


# The kinds that belong to one conversation, by their field.
_PER_CONVERSATION = ("event", "read_receipt", "typing", "queue_position")


def _conversation_of(item: StreamItem) -> str:
    """The conversation an item is about; empty for stream-wide items."""
    kind = item.WhichOneof("kind")
    if kind == "joined":
        return item.joined.conversation.id
    return getattr(item, kind).conversation_id if kind in _PER_CONVERSATION else ""


def cursor_messages(cursors: dict[str, int]) -> list[conversation_pb2.ConversationCursor]:
    """The request form of ``cursors``."""
    return [conversation_pb2.ConversationCursor(conversation_id=c, last_seq=s) for c, s in sorted(cursors.items())]


__all__ = ["ChatEngineError", "StreamItem", "Subscription", "cursor_messages"]
