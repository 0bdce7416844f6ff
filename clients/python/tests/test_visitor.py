"""The visitor flow against a real server: a waiting visitor, an agent who comes online and
is assigned, messages both ways, idempotent sends, typing, end and rating; typed errors."""

from __future__ import annotations

import uuid

import grpc
import pytest

from chat_engine_sdk import (
    AgentClient, ChatEngineError, InvalidArgument, NotFound, PermissionDenied, RateLimited, Unauthenticated,
    VisitorClient,
)
from chat_engine_sdk.pb.chatengine.v1 import conversation_pb2 as cpb
from conftest import ORIGIN, PASSWORD, Pump


def posted(item):
    """The message of a message_posted event, else None."""
    if item.WhichOneof("kind") == "event" and item.event.WhichOneof("kind") == "message_posted":
        return item.event.message_posted
    return None


def status_changed(item):
    if item.WhichOneof("kind") == "event" and item.event.WhichOneof("kind") == "status_changed":
        return item.event.status_changed
    return None


def test_a_visitor_chats_with_an_agent_from_start_to_rating(server, tenant):
    email = tenant.agent("ana")
    with VisitorClient(server.addr, tenant.api_key, origin=ORIGIN) as visitor, AgentClient(server.addr) as agent:
        init = visitor.init_visitor(name="Ada", email="ada@example.com", page_url="https://shop.example/cart")
        assert init.visitor.name == "Ada"
        chat = visitor.start_chat("Hello, anyone there?")
        assert not chat.resumed
        # Nobody is available: the chat waits, first in line.
        waiting = chat.queue_status()
        assert waiting.status == cpb.CONVERSATION_STATUS_QUEUED
        assert waiting.position == 1

        events = Pump(chat.events())
        first = events.until(posted)
        assert posted(first).text == "Hello, anyone there?"
        assert posted(first).sender_type == cpb.SENDER_TYPE_VISITOR

        agent.login(tenant.slug, email, PASSWORD)
        agent.set_status("available")
        agent_events = Pump(agent.subscribe())  # an open stream makes the agent online
        joined = agent_events.until(lambda i: i.WhichOneof("kind") == "joined")
        assert joined.joined.conversation.id == chat.id
        assert joined.joined.visitor.name == "Ada"
        opened = events.until(lambda i: status_changed(i) is not None
                              and status_changed(i).status == cpb.CONVERSATION_STATUS_OPEN)
        assert status_changed(opened).assigned_agent_id == agent.agent_id

        agent.send(chat.id, "Hi Ada, how can I help?")
        reply = posted(events.until(lambda i: posted(i) is not None and posted(i).sender_type == cpb.SENDER_TYPE_AGENT))
        assert reply.text == "Hi Ada, how can I help?"
        assert reply.sender_id == agent.agent_id

        # A retried send (same request_id) is stored once.
        rid = str(uuid.uuid4())
        a = chat.send("Do you ship to Spain?", request_id=rid)
        b = chat.send("Do you ship to Spain?", request_id=rid)
        assert (a.message_id, a.seq) == (b.message_id, b.seq)
        texts = [m.text for m in chat.messages()]
        assert texts.count("Do you ship to Spain?") == 1
        assert texts.index("Hello, anyone there?") < texts.index("Hi Ada, how can I help?") < texts.index("Do you ship to Spain?")
        seen = agent_events.until(lambda i: posted(i) is not None and posted(i).text == "Do you ship to Spain?")
        agent.mark_read(chat.id, posted(seen).seq)

        chat.set_typing(True)
        typing = agent_events.until(lambda i: i.WhichOneof("kind") == "typing")
        assert typing.typing.conversation_id == chat.id and typing.typing.typing

        assert chat.queue_status().status == cpb.CONVERSATION_STATUS_OPEN
        assert chat.end().status == cpb.CONVERSATION_STATUS_CLOSED
        rating = chat.rate(5, "Quick and kind")
        assert (rating.score, rating.agent_id) == (5, agent.agent_id)
        with pytest.raises(ChatEngineError):
            chat.rate(4)  # once per chat

        # The same session resumes the same visitor, with the chat in its history.
        again = VisitorClient(server.addr, tenant.api_key, origin=ORIGIN)
        back = again.init_visitor(visitor.session_id)
        assert back.visitor.id == init.visitor.id
        assert chat.id in [c.id for c in back.conversations]
        again.close()
        events.it.close()
        agent_events.it.close()


def test_errors_are_typed(server, tenant):
    # An origin the widget key does not allow.
    with VisitorClient(server.addr, tenant.api_key, origin="https://elsewhere.example") as stranger:
        with pytest.raises(PermissionDenied):
            stranger.init_visitor(name="Eve")
    with VisitorClient(server.addr, "not-a-key", origin=ORIGIN) as nokey:
        with pytest.raises(ChatEngineError) as e:
            nokey.init_visitor()
        assert e.value.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

    with VisitorClient(server.addr, tenant.api_key, origin=ORIGIN) as v1, \
            VisitorClient(server.addr, tenant.api_key, origin=ORIGIN) as v2:
        v1.init_visitor(name="One")
        v2.init_visitor(name="Two")
        chat = v1.start_chat()
        # Invalid input names its field.
        with pytest.raises(InvalidArgument) as bad:
            chat.send("   ")
        assert "text" in bad.value.fields
        assert all(v.description for v in bad.value.field_violations)
        with pytest.raises(InvalidArgument) as bad:
            v1.init_visitor("short")
        assert bad.value.fields == ["session_id"]
        # Another visitor's chat does not exist for them.
        with pytest.raises(NotFound):
            v2.chat(chat.id).queue_status()

    # Too many logins to one account: RESOURCE_EXHAUSTED with the server's RetryInfo.
    email = tenant.agent("bob")
    with AgentClient(server.addr) as agent:
        with pytest.raises(RateLimited) as limited:
            for _ in range(30):
                with pytest.raises(Unauthenticated):
                    agent.login(tenant.slug, email, "wrong-password-123")
        assert limited.value.retry_after and limited.value.retry_after > 0


def test_a_visitors_chat_stream_resumes_after_a_dropped_connection(server, tenant, proxy):
    email = tenant.agent("fay")
    with VisitorClient(proxy.addr, tenant.api_key, origin=ORIGIN) as visitor, AgentClient(server.addr) as agent:
        agent.login(tenant.slug, email, PASSWORD)
        agent.set_status("available")
        agent_events = Pump(agent.subscribe())
        visitor.init_visitor(name="Gus")
        chat = visitor.start_chat("Hello")
        agent_events.until(lambda i: i.WhichOneof("kind") == "joined")
        sub = chat.events()
        events = Pump(sub)

        def agent_texts(n):
            out = []
            while len(out) < n:
                m = posted(events.next())
                if m is not None and m.sender_type == cpb.SENDER_TYPE_AGENT:
                    out.append(m.text)
            return out

        agent.send(chat.id, "a0")
        assert agent_texts(1) == ["a0"]
        proxy.cut()
        for i in range(1, 6):
            agent.send(chat.id, f"a{i}")
        proxy.restore()
        agent.send(chat.id, "a6")
        assert agent_texts(6) == [f"a{i}" for i in range(1, 7)]
        assert sub.reconnects >= 1
        # Nothing twice: the history holds each once, as the stream gave them.
        history = [m.text for m in chat.messages() if m.sender_type == cpb.SENDER_TYPE_AGENT]
        assert history == [f"a{i}" for i in range(7)]
        sub.close()
        agent_events.it.close()
