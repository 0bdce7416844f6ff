// Integration tests of both facades against the real server (target/debug/chat-engine with
// its private PostgreSQL), over gRPC-web on HTTP/1.1 as a browser speaks it.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ChatEngineSDK, type Chat, type StorageLike } from "../src/index.js";
import {
  ChatEngineAgent,
  ChatEngineError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitedError,
  type AgentStreamItem,
  type ChatMessage,
  type ConnectionStatus,
  type QueueSnapshot,
  type QueueUpdate,
  type TypingEvent,
} from "../src/agent.js";
import { AGENT_PASSWORD, TestServer, createAgent, createTenant, origin, until, type TenantFixture } from "./harness.js";

const FAST = { initialMs: 100, maxMs: 1000 };

class MemoryStorage implements StorageLike {
  private readonly m = new Map<string, string>();
  getItem(k: string) {
    return this.m.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    this.m.set(k, v);
  }
  removeItem(k: string) {
    this.m.delete(k);
  }
}

function assertOnceInOrder(msgs: ChatMessage[], what: string): void {
  const seqs = msgs.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `${what}: seqs ${seqs.join(",")}`);
  assert.equal(new Set(msgs.map((m) => m.id)).size, msgs.length, `${what}: a message twice`);
}

describe("SDK against a real server", () => {
  const server = new TestServer();
  let acme: TenantFixture;
  let ana: ChatEngineAgent;
  const anaItems: AgentStreamItem[] = [];
  const anaStatuses: ConnectionStatus[] = [];
  let anaOff: () => void = () => undefined;

  // Visitors use the SDK's own transport (Connect-ES's gRPC-web over fetch, Node's here), with
  // the Origin header a browser would send on the page.
  const visitorSdk = (t: TenantFixture, storage?: StorageLike, pageOrigin = t.allowedOrigin) =>
    new ChatEngineSDK({
      apiKey: t.apiKey,
      baseUrl: server.baseUrl,
      interceptors: [origin(pageOrigin)],
      storage,
      backoff: FAST,
    });

  before(async () => {
    await server.start();
    // Chats wait until an agent accepts them (no auto-assignment), with a welcome message.
    acme = await createTenant(server, "acme", { autoAssign: false, welcome: "Welcome to Acme!" });
    const a = await createAgent(server, acme, "Ana Agent");
    ana = await ChatEngineAgent.login({
      baseUrl: server.baseUrl,
      tenantSlug: "acme",
      email: a.email,
      password: AGENT_PASSWORD,
      backoff: FAST,
    });
    await ana.setStatus("available");
    const sub = ana.subscribe({
      onItem: (i) => anaItems.push(i),
      onConnectionStatus: (s) => anaStatuses.push(s),
    });
    anaOff = () => sub.unsubscribe();
    await until(() => sub.status === "connected", "the agent's stream");
  });

  after(async () => {
    anaOff();
    await ana?.logout().catch(() => undefined);
    await server.dispose();
  });

  const anaGot = (conv: string, pred: (i: AgentStreamItem) => boolean) =>
    anaItems.some((i) => "conversationId" in i && i.conversationId === conv && pred(i)) ||
    anaItems.some((i) => i.kind === "message" && i.message.conversationId === conv && pred(i));

  let storage: MemoryStorage;
  let chat: Chat;
  let history: ChatMessage[];

  it("visitor flow: config, init, start, queue, accept, messages both ways, typing, read mark", async () => {
    storage = new MemoryStorage();
    const sdk = visitorSdk(acme, storage);
    const config = await sdk.getWidgetConfig();
    assert.equal(config.tenantName, "Tenant acme");
    assert.equal(config.primaryColor, "#112233");
    assert.deepEqual(config.languages, ["en", "es"]);

    const visitor = await sdk.initVisitor({ name: "Ada", email: "ada@example.com", pageUrl: "https://shop.example.com/p" });
    assert.equal(visitor.type, "new");
    assert.equal(visitor.name, "Ada");
    assert.ok(visitor.sessionId.length >= 16);

    const snapshots: QueueSnapshot[] = [];
    const stopWatch = ana.watchQueue((s) => snapshots.push(s));

    chat = await sdk.startChat({ visitorId: visitor.id, initialMessage: "Hello, I need help" });
    const got: ChatMessage[] = [];
    const queue: QueueUpdate[] = [];
    const typing: TypingEvent[] = [];
    const joined: { agentId: string; name?: string }[] = [];
    const reads: number[] = [];
    chat.onMessage((m) => got.push(m));
    chat.onQueueUpdate((q) => queue.push(q));
    chat.onTyping((t) => typing.push(t));
    chat.onAgentJoined((a) => joined.push(a));
    chat.onReadReceipt((r) => reads.push(r.readSeq));
    assert.equal(chat.status, "queued");
    assert.equal(storage.getItem("chat-engine:chat"), chat.id);

    await until(() => queue.length > 0, "a queue update");
    assert.equal(queue[0].position, 1);
    await until(() => got.some((m) => m.content === "Welcome to Acme!"), "the welcome message");
    assert.equal(got.find((m) => m.content === "Welcome to Acme!")?.senderType, "system");
    assert.ok(chat.messages().some((m) => m.content === "Hello, I need help" && m.senderType === "visitor"));

    await until(() => snapshots.some((s) => s.chats.some((c) => c.conversation.id === chat.id)), "the chat in the live queue");
    const waiting = await ana.waitingChats();
    const w = waiting.chats.find((c) => c.conversation.id === chat.id);
    assert.ok(w, "the chat waits");
    assert.equal(w.visitorName, "Ada");
    stopWatch();

    const accepted = await ana.accept(chat.id);
    assert.equal(accepted.assignedAgentId, ana.me.id);
    await until(() => joined.length > 0, "agent joined");
    assert.deepEqual(joined, [{ agentId: ana.me.id, name: "Ana Agent" }]);
    assert.equal(chat.assignedAgentName, "Ana Agent");
    assert.equal(chat.status, "open");
    await until(() => anaItems.some((i) => i.kind === "joined" && i.conversation.id === chat.id), "the agent joins");

    const sent = await chat.sendMessage({ content: "Is anyone there?" });
    assert.equal(sent.senderType, "visitor");
    await until(() => anaGot(chat.id, (i) => i.kind === "message" && i.message.content === "Is anyone there?"), "visitor → agent");
    const atAgent = anaItems.find((i) => i.kind === "message" && i.message.id === sent.id);
    assert.ok(atAgent && atAgent.kind === "message" && atAgent.message.senderType === "visitor");

    await ana.setTyping(chat.id, true);
    await until(() => typing.some((t) => t.typing && t.senderId === ana.me.id), "agent typing");
    assert.equal(typing[0].senderType, "agent");
    assert.equal(typing[0].name, "Ana Agent");
    await chat.setTyping(true);
    await until(
      () => anaItems.some((i) => i.kind === "typing" && i.conversationId === chat.id && i.senderType === "visitor" && i.typing),
      "visitor typing",
    );

    const reply = await ana.send(chat.id, "Hi Ada, Ana here.");
    await until(() => got.some((m) => m.id === reply.id), "agent → visitor");
    const r = got.find((m) => m.id === reply.id);
    assert.equal(r?.senderType, "agent");
    assert.equal(r?.senderId, ana.me.id);
    assert.equal(r?.content, "Hi Ada, Ana here.");
    assert.equal(r?.senderName, "Ana Agent", "the visitor sees who answers");
    const mine = anaItems.find((i) => i.kind === "message" && i.message.id === reply.id);
    assert.ok(mine && mine.kind === "message" && mine.message.senderName === "Ana Agent");

    const read = await ana.markRead(chat.id, sent.seq);
    assert.equal(read.readSeq, sent.seq);
    await until(() => reads.includes(sent.seq), "the read mark");

    assertOnceInOrder(chat.messages(), "visitor history");
    assert.equal(got.filter((m) => m.id === sent.id).length, 1, "the visitor's own message once");
    history = chat.messages();
    const server_ = await sdk.history(chat.id);
    assert.deepEqual(
      history.map((m) => m.id),
      server_.map((m) => m.id),
    );
  });

  it("a chat already served when StartChat answers still tells the visitor who joined", async () => {
    // Auto-assignment with an agent available and online: the dispatcher may assign a chat
    // before StartChat has answered. Starting again while the chat is open answers the same
    // chat, always already served: the same case, every time.
    const quick = await createTenant(server, "quick", { autoAssign: true, welcome: "Hi from Quick!" });
    const b = await createAgent(server, quick, "Bo Agent");
    const bo = await ChatEngineAgent.login({
      baseUrl: server.baseUrl,
      tenantSlug: "quick",
      email: b.email,
      password: AGENT_PASSWORD,
      backoff: FAST,
    });
    const sub = bo.subscribe({ onItem: () => undefined });
    const chats: Chat[] = [];
    try {
      await until(() => sub.status === "connected", "the agent's stream");
      await bo.setStatus("available");
      const sdk = visitorSdk(quick);
      const visitor = await sdk.initVisitor({ name: "Cy" });
      const first = await sdk.startChat({ visitorId: visitor.id, initialMessage: "Quick question" });
      chats.push(first);
      await until(() => first.assignedAgentId === bo.me.id, "the chat served");
      first.disconnect();

      const again = await sdk.startChat({ visitorId: visitor.id });
      chats.push(again);
      assert.equal(again.id, first.id, "the open chat, not a new one");
      const joined: { agentId: string; name?: string }[] = [];
      again.onAgentJoined((a) => joined.push(a));
      await until(() => joined.length > 0, "the visitor is told who joined");
      assert.deepEqual(joined, [{ agentId: bo.me.id, name: "Bo Agent" }]);
      assert.equal(again.assignedAgentName, "Bo Agent");
      assert.equal(again.status, "open");
    } finally {
      for (const c of chats) c.disconnect();
      sub.unsubscribe();
      await bo.logout().catch(() => undefined);
    }
  });

  it("a reload resumes the same visitor and chat: history back, no duplicate, live again", async () => {
    chat.disconnect();
    const sdk = visitorSdk(acme, storage);
    const visitor = await sdk.initVisitor({ name: "Ada" });
    assert.equal(visitor.type, "returning");
    const id = sdk.storedChatId();
    assert.equal(id, chat.id);
    assert.ok(visitor.chats.some((c) => c.id === id && c.status === "open"));
    chat = await sdk.resumeChat(id!);
    assert.equal(chat.status, "open");
    assert.equal(chat.assignedAgentId, ana.me.id);
    assert.deepEqual(
      chat.messages().map((m) => m.id),
      history.map((m) => m.id),
    );
    const got: ChatMessage[] = [];
    chat.onMessage((m) => got.push(m));
    await until(() => chat.connectionStatus === "connected", "the resumed stream");
    const m = await ana.send(chat.id, "Still with you.");
    await until(() => got.some((x) => x.id === m.id), "a live message after the reload");
    assert.deepEqual(
      got.map((x) => x.id),
      [m.id],
      "only the new message is new",
    );
    assertOnceInOrder(chat.messages(), "resumed history");
  });

  it("survives a server restart mid-chat: reconnects, resumes by seq, nothing lost or doubled", async () => {
    const statuses: ConnectionStatus[] = [];
    const got: ChatMessage[] = [];
    chat.onStatusChange((s) => statuses.push(s));
    chat.onMessage((m) => got.push(m));
    const before = chat.messages().length;

    await server.stop();
    await until(() => statuses.includes("reconnecting"), "the visitor's stream to notice");
    // Sent while the server is down: retried with the same request id until it is back.
    const pending = chat.sendMessage({ content: "Sent during the outage" });
    await server.start();

    // Sent as soon as the server is back, likely before the visitor's stream has resumed.
    const agentMsgs: ChatMessage[] = [];
    for (const text of ["after restart 1", "after restart 2", "after restart 3"]) agentMsgs.push(await ana.send(chat.id, text));
    const outage = await pending;

    await until(() => agentMsgs.every((a) => got.some((m) => m.id === a.id)), "every agent message after the restart", 30_000);
    await until(() => chat.connectionStatus === "connected", "connected again");
    assert.ok(statuses.indexOf("connected") > statuses.indexOf("reconnecting"));
    await until(() => anaGot(chat.id, (i) => i.kind === "message" && i.message.id === outage.id), "the outage message at the agent", 30_000);
    assert.ok(anaStatuses.includes("reconnecting"), "the agent's stream reconnected too");

    for (const a of agentMsgs) assert.equal(got.filter((m) => m.id === a.id).length, 1, `${a.content} once`);
    assert.equal(got.filter((m) => m.id === outage.id).length, 1, "the outage message once");
    assertOnceInOrder(chat.messages(), "history after the restart");
    assert.equal(chat.messages().length, before + 4);
    const stored = await ana.listMessages(chat.id, { after: 0, limit: 200 });
    assert.equal(stored.filter((m) => m.content === "Sent during the outage").length, 1, "stored once");
    assert.deepEqual(
      chat.messages().map((m) => m.id),
      stored.map((m) => m.id),
      "the visitor has exactly the stored history",
    );
    const agentSide = anaItems.filter((i) => i.kind === "message" && i.message.conversationId === chat.id);
    assert.equal(
      new Set(agentSide.map((i) => (i.kind === "message" ? i.message.id : ""))).size,
      agentSide.length,
      "the agent got no message twice",
    );
  });

  it("a send retried with the same request id is stored once", async () => {
    const got: ChatMessage[] = [];
    chat.onMessage((m) => got.push(m));
    const requestId = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f";
    const first = await chat.sendMessage({ content: "only once", requestId });
    const again = await chat.sendMessage({ content: "only once", requestId });
    assert.equal(again.id, first.id);
    assert.equal(again.seq, first.seq);
    await assert.rejects(chat.sendMessage({ content: "something else", requestId }), (e: unknown) => {
      assert.ok(e instanceof ChatEngineError);
      assert.equal(e.code, "already_exists");
      return true;
    });
    const stored = await ana.listMessages(chat.id, { after: 0, limit: 200 });
    assert.equal(stored.filter((m) => m.content === "only once").length, 1);
    await until(() => anaGot(chat.id, (i) => i.kind === "message" && i.message.id === first.id), "the agent sees it");
    assert.equal(got.filter((m) => m.id === first.id).length, 1);
    assert.equal(chat.messages().filter((m) => m.id === first.id).length, 1);
  });

  it("the chat ends (either side sees it) and the visitor rates it", async () => {
    const ended: number[] = [];
    chat.onEnd((e) => ended.push(e.seq));
    await chat.end();
    await until(() => ended.length > 0, "onEnd");
    assert.equal(chat.status, "closed");
    await until(
      () => anaGot(chat.id, (i) => i.kind === "statusChanged" && i.status === "closed"),
      "the agent sees the chat closed",
    );
    const rating = await chat.rate(5, "Great help");
    assert.equal(rating.score, 5);
    assert.equal(rating.agentId, ana.me.id);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(ended.length, 1, "onEnd once");
    assert.equal(storage.getItem("chat-engine:chat"), null, "the rated chat is forgotten");
    chat.disconnect();
  });

  it("an agent closes a chat; transfer to a skill returns it to the queue", async () => {
    const sdk = visitorSdk(acme);
    const v = await sdk.initVisitor({ name: "Bob" });
    const c = await sdk.startChat({ visitorId: v.id, initialMessage: "hi" });
    const ends: number[] = [];
    c.onEnd((e) => ends.push(e.seq));
    await ana.accept(c.id);
    const t = await ana.transfer(c.id, { skill: "billing" });
    assert.equal(t.status, "queued");
    await until(() => c.status === "queued", "back in the queue");
    await ana.accept(c.id);
    const closed = await ana.close(c.id);
    assert.equal(closed.status, "closed");
    await until(() => ends.length === 1, "the visitor sees the end");
    c.disconnect();
    const list = await ana.listConversations();
    assert.ok(list.conversations.some((x) => x.conversation.id === c.id && x.conversation.kind === "external"));
  });

  it("typed errors: origin not allowed, invalid field, not found, rate limited", async () => {
    const evil = visitorSdk(acme, undefined, "https://evil.example");
    await assert.rejects(evil.getWidgetConfig(), PermissionDeniedError);
    await assert.rejects(evil.initVisitor({ name: "Eve" }), PermissionDeniedError);

    const sdk = visitorSdk(acme);
    await assert.rejects(sdk.initVisitor({ sessionId: "short" }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError, String(e));
      assert.ok(e.fieldViolations.some((f) => f.field === "session_id" && f.description.length > 0), JSON.stringify(e.fieldViolations));
      return true;
    });

    const v = await sdk.initVisitor({ name: "Rita" });
    await assert.rejects(sdk.resumeChat("00000000-0000-7000-8000-000000000000"), NotFoundError);

    const c = await sdk.startChat({ visitorId: v.id });
    await assert.rejects(c.sendMessage({ content: "   " }), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.ok(e.fieldViolations.some((f) => f.field === "text"), JSON.stringify(e.fieldViolations));
      return true;
    });
    // The per-visitor limit of this server is 30 at once: a burst of 60 calls goes over it.
    const results = await Promise.allSettled(Array.from({ length: 60 }, () => c.setTyping(true)));
    const limited = results.flatMap((r) => (r.status === "rejected" ? [r.reason] : []));
    assert.ok(limited.length > 0, "some calls were limited");
    for (const e of limited) {
      assert.ok(e instanceof RateLimitedError, String(e));
      assert.ok(e.retryAfterMs > 0, `retryAfterMs ${e.retryAfterMs}`);
    }
    c.disconnect();
  });
});
