"""The agent side: login with refresh before expiry, status, conversations and the queue
(accept, transfer, close), send, typing, read marks, and the resuming event stream."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

import grpc

from ._transport import Caller, Metadata, RetryPolicy, open_channel
from .errors import Unauthenticated
from .stream import Subscription, cursor_messages
from .pb.chatengine.v1 import (
    agent_pb2, agent_pb2_grpc, auth_pb2, auth_pb2_grpc, common_pb2, conversation_pb2,
    conversation_pb2_grpc, queue_pb2, queue_pb2_grpc,
)

_STATUS = {
    "available": common_pb2.AGENT_STATUS_AVAILABLE,
    "busy": common_pb2.AGENT_STATUS_BUSY,
    "away": common_pb2.AGENT_STATUS_AWAY,
    "offline": common_pb2.AGENT_STATUS_OFFLINE,
}


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


class AgentClient:
    """An agent's client. Log in with :meth:`login`; the access token is then refreshed
    by itself shortly before it expires (``refresh_margin`` seconds, or a third of its
    lifetime for short-lived tokens), and once more when the server answers UNAUTHENTICATED.
    """

    def __init__(self, target: str, *, credentials: grpc.ChannelCredentials | None = None,
                 channel: grpc.Channel | None = None, retry: RetryPolicy | None = None,
                 timeout: float | None = 30.0, refresh_margin: float = 30.0,
                 clock: Callable[[], float] = time.time):
        self._channel = channel or open_channel(target, credentials=credentials)
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._agents = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._conv = conversation_pb2_grpc.ConversationServiceStub(self._channel)
        self._queue = queue_pb2_grpc.QueueServiceStub(self._channel)
        self._retry = retry or RetryPolicy()
        self._margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: auth_pb2.TokenPair | None = None
        self._refresh_at = 0.0
        self.refreshes = 0
        """How many times the tokens were refreshed."""
        self._plain = Caller(lambda: (), self._retry, timeout)
        self._call = Caller(self._metadata, self._retry, timeout)

    # -- session -------------------------------------------------------------------------

    @property
    def tokens(self) -> auth_pb2.TokenPair:
        """The current token pair."""
        if self._tokens is None:
            raise RuntimeError("call login() first")
        return self._tokens

    @property
    def agent_id(self) -> str:
        """The logged-in agent's id."""
        return self.tokens.agent_id

    def _keep(self, tokens: auth_pb2.TokenPair) -> auth_pb2.TokenPair:
        now = self._clock()
        expiry = _seconds(tokens.access_token_expire_time)
        self._tokens = tokens
        self._refresh_at = expiry - min(self._margin, max(expiry - now, 0) / 3)
        return tokens

    def login(self, tenant: str, email: str, password: str) -> auth_pb2.TokenPair:
        """Logs in with the tenant's slug, the agent's email and password."""
        req = auth_pb2.LoginRequest(tenant_slug=tenant, email=email, password=password)
        with self._lock:
            return self._keep(self._plain(self._auth.Login, req, retry=True).tokens)

    def refresh(self) -> auth_pb2.TokenPair:
        """Rotates the tokens now (the old refresh token stops working). Not retried: a
        replayed refresh token would end the session everywhere."""
        with self._lock:
            return self._refresh_locked(self.tokens.refresh_token)

    def _refresh_locked(self, seen: str) -> auth_pb2.TokenPair:
        if self._tokens is not None and self._tokens.refresh_token != seen:
            return self._tokens  # another thread refreshed meanwhile
        req = auth_pb2.RefreshRequest(refresh_token=seen)
        tokens = self._plain(self._auth.Refresh, req).tokens
        self.refreshes += 1
        return self._keep(tokens)

    def logout(self) -> None:
        """Ends the session (its refresh token family) on every device."""
        self._plain(self._auth.Logout, auth_pb2.LogoutRequest(refresh_token=self.tokens.refresh_token))
        self._tokens = None

    def _metadata(self) -> Metadata:
        tokens = self.tokens
        if self._clock() >= self._refresh_at:
            with self._lock:
                tokens = self._refresh_locked(tokens.refresh_token)
        return [("authorization", f"Bearer {tokens.access_token}")]

    def _renew_after_refusal(self, seen: str | None = None) -> bool:
        """Refreshes once after an UNAUTHENTICATED (a token revoked or expired early);
        False when the refresh token is refused too. ``seen`` is the access token that was
        refused: when another call refreshed meanwhile, its tokens are used as they are."""
        with self._lock:
            if seen is not None and self.tokens.access_token != seen:
                return True
            try:
                self._refresh_locked(self.tokens.refresh_token)
                return True
            except Unauthenticated:
                return False

    def _authed(self, method, request, *, retry: bool = False):
        seen = self.tokens.access_token
        try:
            return self._call(method, request, retry=retry)
        except Unauthenticated:
            if not self._renew_after_refusal(seen):
                raise
            return self._call(method, request, retry=retry)

    # -- agent ---------------------------------------------------------------------------

    def set_status(self, status: str | int) -> agent_pb2.Agent:
        """Sets the caller's availability: ``"available"``, ``"busy"``, ``"away"``,
        ``"offline"`` (or an ``AgentStatus`` value)."""
        value = _STATUS[status] if isinstance(status, str) else status
        return self._authed(self._agents.SetMyStatus, agent_pb2.SetMyStatusRequest(status=value), retry=True).agent

    # -- conversations -------------------------------------------------------------------

    def conversations(self, *, page_size: int = 50, page_token: str = "") -> conversation_pb2.ListConversationsResponse:
        """One page of the caller's conversations, newest activity first."""
        req = conversation_pb2.ListConversationsRequest(page_size=page_size, page_token=page_token)
        return self._authed(self._conv.ListConversations, req, retry=True)

    def create_conversation(self, members: list[str], *, title: str = "") -> conversation_pb2.Conversation:
        """An internal chat with other agents of the tenant: direct with one agent and no
        title (the existing one when there is one), a group with a ``title``."""
        kind = conversation_pb2.CONVERSATION_KIND_GROUP if title else conversation_pb2.CONVERSATION_KIND_DIRECT
        req = conversation_pb2.CreateConversationRequest(kind=kind, member_agent_ids=members, title=title)
        return self._authed(self._conv.CreateConversation, req).conversation

    def send(self, conversation_id: str, text: str, *, request_id: str | None = None) -> conversation_pb2.SendMessageResponse:
        """Sends a text message; retried on a broken connection with the same
        ``request_id`` (a new UUID when None), so it is stored once."""
        req = conversation_pb2.SendMessageRequest(conversation_id=conversation_id, text=text,
                                                  request_id=request_id or str(uuid.uuid4()))
        return self._authed(self._conv.SendMessage, req, retry=True)

    def messages(self, conversation_id: str, *, after_seq: int = 0, page_size: int = 200) -> list[conversation_pb2.Message]:
        """Every message after ``after_seq``, oldest first (all pages)."""
        out: list[conversation_pb2.Message] = []
        token = ""
        while True:
            req = conversation_pb2.ListMessagesRequest(conversation_id=conversation_id, anchor_seq=after_seq,
                                                       direction=conversation_pb2.LIST_DIRECTION_FORWARD,
                                                       page_size=page_size, page_token=token)
            r = self._authed(self._conv.ListMessages, req, retry=True)
            out.extend(r.messages)
            token = r.next_page_token
            if not token:
                return out

    def set_typing(self, conversation_id: str, typing: bool = True) -> None:
        """Tells the other side the caller is (or stopped) typing."""
        req = conversation_pb2.SetTypingRequest(conversation_id=conversation_id, typing=typing)
        self._authed(self._conv.SetTyping, req, retry=True)

    def mark_read(self, conversation_id: str, seq: int) -> conversation_pb2.MarkReadResponse:
        """Moves the caller's read position to ``seq``."""
        req = conversation_pb2.MarkReadRequest(conversation_id=conversation_id, seq=seq)
        return self._authed(self._conv.MarkRead, req, retry=True)

    def subscribe(self, cursors: dict[str, int] | None = None, *, only: str | None = None) -> Subscription:
        """The resuming stream of every conversation the caller belongs to (see
        :class:`Subscription`). Opening it also makes the agent online for routing."""
        def opener(c: dict[str, int]):
            req = conversation_pb2.SubscribeRequest(cursors=cursor_messages(c))
            return self._conv.Subscribe(req, metadata=self._metadata())
        return Subscription(opener, cursors, retry=self._retry, on_unauthenticated=self._renew_after_refusal,
                            only=only)

    # -- the queue -----------------------------------------------------------------------

    def waiting_chats(self, *, page_size: int = 50, page_token: str = "") -> queue_pb2.ListWaitingChatsResponse:
        """The tenant's waiting chats in serving order."""
        req = queue_pb2.ListWaitingChatsRequest(page_size=page_size, page_token=page_token)
        return self._authed(self._queue.ListWaitingChats, req, retry=True)

    def accept(self, conversation_id: str) -> conversation_pb2.Conversation:
        """Takes a waiting chat (or one offered to the caller)."""
        req = queue_pb2.AcceptChatRequest(conversation_id=conversation_id)
        return self._authed(self._queue.AcceptChat, req).conversation

    def transfer(self, conversation_id: str, *, to_agent: str | None = None,
                 to_skill: str | None = None) -> conversation_pb2.Conversation:
        """Hands a chat to another agent, or back to the queue for a skill."""
        if (to_agent is None) == (to_skill is None):
            raise ValueError("give exactly one of to_agent and to_skill")
        req = queue_pb2.TransferChatRequest(conversation_id=conversation_id)
        if to_agent is not None:
            req.agent_id = to_agent
        else:
            req.skill = to_skill
        return self._authed(self._queue.TransferChat, req).conversation

    def close_chat(self, conversation_id: str) -> conversation_pb2.Conversation:
        """Closes an external chat."""
        req = queue_pb2.CloseChatRequest(conversation_id=conversation_id)
        return self._authed(self._queue.CloseChat, req).conversation

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
