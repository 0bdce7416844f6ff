"""The visitor flow of a website chat, as the widget runs it: ``init_visitor`` (widget key,
optional Origin), ``start_chat``, then the chat's calls: send (idempotent by request_id),
messages, queue status, typing, events, end and rate."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Callable

import grpc

from ._transport import Caller, Metadata, RetryPolicy, open_channel
from .stream import Subscription, cursor_messages
from .pb.chatengine.v1 import common_pb2, conversation_pb2, visitor_pb2, visitor_pb2_grpc

# A visitor token is renewed (InitVisitor again with the same session) this long before it
# expires, so a call never goes out with a token about to lapse.
_RENEW_BEFORE = 60.0


class VisitorClient:
    """A website visitor's client.

    ``target`` is ``host:port``, ``http://…`` or ``https://…``; ``api_key`` the tenant's
    widget key; ``origin`` the web origin to present (``https://shop.example``), which the
    key must allow when given.
    """

    def __init__(self, target: str, api_key: str, *, origin: str | None = None, tenant_id: str = "",
                 credentials: grpc.ChannelCredentials | None = None, channel: grpc.Channel | None = None,
                 retry: RetryPolicy | None = None, timeout: float | None = 30.0,
                 clock: Callable[[], float] = time.time):
        self._channel = channel or open_channel(target, credentials=credentials)
        self._stub = visitor_pb2_grpc.VisitorServiceStub(self._channel)
        self._api_key = api_key
        self._origin = origin
        self._tenant_id = tenant_id
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._init: visitor_pb2.InitVisitorRequest | None = None
        self._token = ""
        self._token_expiry = 0.0
        self.visitor: common_pb2.Visitor | None = None
        """The visitor, once :meth:`init_visitor` ran."""
        self._call = Caller(self._metadata, self._retry, timeout)

    # -- credentials ---------------------------------------------------------------------

    def _key_metadata(self) -> list[tuple[str, str]]:
        md = [("x-api-key", self._api_key)]
        if self._origin:
            md.append(("origin", self._origin))
        return md

    def _metadata(self) -> Metadata:
        if self._init is None:
            raise RuntimeError("call init_visitor() first")
        if self._token_expiry - self._clock() < _RENEW_BEFORE:
            self._renew()
        return [*self._key_metadata(), ("authorization", f"Bearer {self._token}")]

    def _renew(self) -> visitor_pb2.InitVisitorResponse:
        r = self._call(self._stub.InitVisitor, self._init, retry=True, metadata=self._key_metadata)
        self._token = r.visitor_token
        self._token_expiry = r.visitor_token_expire_time.seconds + r.visitor_token_expire_time.nanos / 1e9
        self.visitor = r.visitor
        return r

    # -- the flow ------------------------------------------------------------------------

    def widget_config(self) -> visitor_pb2.GetWidgetConfigResponse:
        """The tenant's widget look and whether agents are online."""
        return self._call(self._stub.GetWidgetConfig, visitor_pb2.GetWidgetConfigRequest(), retry=True,
                          metadata=self._key_metadata)

    def init_visitor(self, session_id: str | None = None, *, name: str = "", email: str = "",
                     page_url: str = "", referrer: str = "", language: str = "", country: str = "",
                     attributes: dict[str, str] | None = None,
                     identity: tuple[str, str] | None = None) -> visitor_pb2.InitVisitorResponse:
        """Creates or resumes the visitor of ``session_id`` (a new random one when None; keep
        :attr:`session_id` to come back as the same visitor). ``identity`` is
        ``(external_user_id, proof)`` for a logged-in user of the tenant's site."""
        req = visitor_pb2.InitVisitorRequest(
            tenant_id=self._tenant_id, session_id=session_id or secrets.token_urlsafe(24), name=name,
            email=email, page_url=page_url, referrer=referrer, language=language, country=country,
            attributes=attributes or {},
        )
        if identity:
            req.identity.external_user_id, req.identity.proof = identity
        self._init = req
        return self._renew()

    @property
    def session_id(self) -> str:
        """The widget session id in use."""
        if self._init is None:
            raise RuntimeError("call init_visitor() first")
        return self._init.session_id

    def start_chat(self, initial_message: str = "", *, request_id: str | None = None) -> "Chat":
        """Starts a chat (queued for an agent by the tenant's workflows), or returns the
        visitor's chat that has not ended yet (``chat.resumed``)."""
        req = visitor_pb2.StartChatRequest(initial_message=initial_message,
                                           request_id=request_id or (str(uuid.uuid4()) if initial_message else ""))
        r = self._call(self._stub.StartChat, req, retry=True)
        return Chat(self, r.conversation, resumed=r.resumed, queue=r.queue_status)

    def chat(self, conversation_id: str) -> "Chat":
        """A handle on one of the visitor's chats by id (e.g. from ``init_visitor``'s
        ``conversations`` after a page reload)."""
        return Chat(self, conversation_pb2.Conversation(id=conversation_id))

    def subscribe(self, cursors: dict[str, int] | None = None, *, only: str | None = None) -> Subscription:
        """The resuming stream of the visitor's chats (see :class:`Subscription`); with
        ``only``, the items of that conversation alone."""
        def opener(c: dict[str, int]):
            req = visitor_pb2.SubscribeVisitorRequest(cursors=cursor_messages(c))
            return self._stub.SubscribeVisitor(req, metadata=self._metadata())
        return Subscription(opener, cursors, retry=self._retry, only=only)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> "VisitorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Chat:
    """One of the visitor's chats."""

    def __init__(self, client: VisitorClient, conversation: conversation_pb2.Conversation, *,
                 resumed: bool = False, queue: visitor_pb2.QueueStatus | None = None):
        self._c = client
        self.conversation = conversation
        """The conversation as the server last returned it."""
        self.resumed = resumed
        """True when start_chat returned a chat that was already open."""
        self.queue = queue
        """Where the chat stood when it was started."""

    @property
    def id(self) -> str:
        """Conversation id."""
        return self.conversation.id

    def send(self, text: str, *, request_id: str | None = None) -> visitor_pb2.SendVisitorMessageResponse:
        """Sends a text message; answers once it is stored. Retried on a broken connection
        with the same ``request_id`` (a new UUID when None), so it is stored once."""
        req = visitor_pb2.SendVisitorMessageRequest(conversation_id=self.id, text=text,
                                                    type=common_pb2.MESSAGE_TYPE_TEXT,
                                                    request_id=request_id or str(uuid.uuid4()))
        return self._c._call(self._c._stub.SendVisitorMessage, req, retry=True)

    def messages(self, *, after_seq: int = 0, page_size: int = 200) -> list[conversation_pb2.Message]:
        """Every message after ``after_seq``, oldest first (all pages)."""
        out: list[conversation_pb2.Message] = []
        token = ""
        while True:
            req = visitor_pb2.ListVisitorMessagesRequest(conversation_id=self.id, anchor_seq=after_seq,
                                                         direction=conversation_pb2.LIST_DIRECTION_FORWARD,
                                                         page_size=page_size, page_token=token)
            r = self._c._call(self._c._stub.ListVisitorMessages, req, retry=True)
            out.extend(r.messages)
            token = r.next_page_token
            if not token:
                return out

    def queue_status(self) -> visitor_pb2.QueueStatus:
        """Where the chat stands: its place and estimated wait while queued."""
        req = visitor_pb2.GetQueueStatusRequest(conversation_id=self.id)
        return self._c._call(self._c._stub.GetQueueStatus, req, retry=True).queue_status

    def set_typing(self, typing: bool = True) -> None:
        """Tells the agent the visitor is (or stopped) typing."""
        req = visitor_pb2.SetVisitorTypingRequest(conversation_id=self.id, typing=typing)
        self._c._call(self._c._stub.SetVisitorTyping, req, retry=True)

    def events(self, *, after_seq: int = 0) -> Subscription:
        """The resuming stream of this chat's items from ``after_seq`` on (0: its whole
        history, then live). Items of the visitor's other chats are left out."""
        return self._c.subscribe({self.id: after_seq}, only=self.id)

    def end(self) -> conversation_pb2.Conversation:
        """Ends the chat from the visitor's side (ending it again changes nothing)."""
        r = self._c._call(self._c._stub.EndChat, visitor_pb2.EndChatRequest(conversation_id=self.id), retry=True)
        self.conversation = r.conversation
        return r.conversation

    def rate(self, score: int, comment: str = "") -> visitor_pb2.SubmitRatingResponse:
        """Rates the ended chat, 1-5, once."""
        req = visitor_pb2.SubmitRatingRequest(conversation_id=self.id, score=score, comment=comment)
        return self._c._call(self._c._stub.SubmitRating, req)
