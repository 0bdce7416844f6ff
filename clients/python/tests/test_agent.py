"""The agent side against a real server: refresh before expiry, and a subscriber that
resumes by seq after its connection is cut, with nothing lost and nothing twice."""

from __future__ import annotations

import time

import pytest

from chat_engine_sdk import AgentClient, Unauthenticated
from chat_engine_sdk.pb.chatengine.v1 import auth_pb2, auth_pb2_grpc
from conftest import ACCESS_TTL, PASSWORD, Pump


def posted_text(item):
    if item.WhichOneof("kind") == "event" and item.event.WhichOneof("kind") == "message_posted":
        return item.event.message_posted.text
    return None


def test_login_refreshes_before_expiry(server, tenant):
    email = tenant.agent("cleo")
    with AgentClient(server.addr) as agent:
        first = agent.login(tenant.slug, email, PASSWORD)
        agent.conversations()
        assert agent.refreshes == 0
        # Past two thirds of the token's life the next call refreshes first.
        time.sleep(ACCESS_TTL * 2 / 3 + 0.5)
        agent.conversations()
        assert agent.refreshes == 1
        assert agent.tokens.access_token != first.access_token
        assert agent.tokens.refresh_token != first.refresh_token
        # The server rotated the token: the first refresh token is spent, and presenting it
        # again ends the session, after which the client's own refresh is refused too.
        with server.channel() as ch:
            with pytest.raises(Exception):
                auth_pb2_grpc.AuthServiceStub(ch).Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
        time.sleep(1.5)  # revocations reach every node within a second
        with pytest.raises(Unauthenticated):
            agent.conversations()
            agent.refresh()


def test_the_subscriber_resumes_after_a_dropped_connection(server, tenant, proxy):
    sender_email, reader_email = tenant.agent("dan"), tenant.agent("eva")
    with AgentClient(server.addr) as sender, AgentClient(proxy.addr) as reader:
        sender.login(tenant.slug, sender_email, PASSWORD)
        reader.login(tenant.slug, reader_email, PASSWORD)
        conv = sender.create_conversation([reader.agent_id], title="night shift").id

        sub = reader.subscribe({conv: 0})
        items = Pump(sub)
        items.until(lambda i: i.WhichOneof("kind") == "caught_up")
        seqs: list[int] = []

        def take(n):
            got = []
            while len(got) < n:
                item = items.next()
                if item.WhichOneof("kind") == "event":
                    seqs.append(item.event.seq)
                    if posted_text(item):
                        got.append(posted_text(item))
            return got

        sent = []
        for i in range(5):
            sender.send(conv, f"m{i}")
            sent.append(f"m{i}")
        assert take(5) == sent[:5]

        # The network fails: the reader's connection drops and reconnects are refused for a
        # while, during which more messages are sent.
        proxy.cut()
        for i in range(5, 12):
            sender.send(conv, f"m{i}")
            sent.append(f"m{i}")
        time.sleep(1.0)
        proxy.restore()
        for i in range(12, 15):
            sender.send(conv, f"m{i}")
            sent.append(f"m{i}")

        assert take(10) == sent[5:]
        assert sub.reconnects >= 1 and proxy.accepted >= 2
        # Every event once, in order, no gap.
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert sub.cursors[conv] == seqs[-1]
        sub.close()
