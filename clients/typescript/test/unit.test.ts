// Unit tests of the SDK's pure parts: backoff, error mapping, dedupe by seq, the reconnect loop.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Backoff } from "../src/backoff.js";
import { messageOf } from "../src/convert.js";
import { MessageSchema, SenderType } from "../src/gen/chatengine/v1/conversation_pb.js";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  ChatEngineError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitedError,
  UnauthenticatedError,
  toChatEngineError,
} from "../src/errors.js";
import { ConversationEventSchema, StreamItemSchema, type StreamItem } from "../src/gen/chatengine/v1/conversation_pb.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { Reconnector, SeqCursors, pumpItems } from "../src/stream.js";
import type { ConnectionStatus } from "../src/types.js";

describe("Backoff", () => {
  it("grows exponentially up to the cap, within [cap/2, cap]", () => {
    const lo = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
    const hi = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999999 });
    const lows = Array.from({ length: 6 }, () => lo.next());
    const highs = Array.from({ length: 6 }, () => hi.next());
    assert.deepEqual(lows, [50, 100, 200, 400, 500, 500]);
    assert.deepEqual(highs, [100, 200, 400, 800, 1000, 1000]);
  });

  it("jitters: draws spread over the interval", () => {
    const b = new Backoff({ initialMs: 1000, maxMs: 1000 });
    const seen = new Set(Array.from({ length: 50 }, () => b.next()));
    assert.ok(seen.size > 10, `only ${seen.size} distinct delays`);
    for (const d of seen) assert.ok(d >= 500 && d <= 1000, `delay ${d}`);
  });

  it("starts over after reset", () => {
    const b = new Backoff({ initialMs: 100, maxMs: 10_000, random: () => 0.999999 });
    b.next();
    b.next();
    b.next();
    assert.equal(b.attempts, 3);
    b.reset();
    assert.equal(b.attempts, 0);
    assert.equal(b.next(), 100);
  });
});

describe("toChatEngineError", () => {
  it("maps RESOURCE_EXHAUSTED with RetryInfo to RateLimitedError with retryAfterMs", () => {
    const e = new ConnectError("visitor rate limit", Code.ResourceExhausted, undefined, [
      { desc: RetryInfoSchema, value: { retryDelay: create(DurationSchema, { seconds: 2n, nanos: 500_000_000 }) } },
    ]);
    const out = toChatEngineError(e);
    assert.ok(out instanceof RateLimitedError);
    assert.equal(out.retryAfterMs, 2500);
    assert.equal(out.code, "resource_exhausted");
    assert.equal(out.message, "visitor rate limit");
  });

  it("maps INVALID_ARGUMENT with BadRequest to field violations", () => {
    const e = new ConnectError("bad request", Code.InvalidArgument, undefined, [
      {
        desc: BadRequestSchema,
        value: {
          fieldViolations: [
            { field: "session_id", description: "must be 16-128 characters" },
            { field: "email", description: "is not an email" },
          ],
        },
      },
    ]);
    const out = toChatEngineError(e);
    assert.ok(out instanceof InvalidArgumentError);
    assert.deepEqual(out.fieldViolations, [
      { field: "session_id", description: "must be 16-128 characters" },
      { field: "email", description: "is not an email" },
    ]);
  });

  it("reads details from the raw google.rpc.Status bytes as gRPC-web carries them", () => {
    // What the transport decodes from grpc-status-details-bin: each detail's type and bytes.
    const e = new ConnectError("resync", Code.Aborted);
    e.details = [
      { type: "google.rpc.ErrorInfo", value: toBinary(ErrorInfoSchema, create(ErrorInfoSchema, { reason: "RESYNC_REQUIRED" })) },
    ];
    const out = toChatEngineError(e);
    assert.equal(out.code, "aborted");
    assert.equal(out.reason, "RESYNC_REQUIRED");
    assert.equal(out.retryable, false);
    assert.ok(!(out instanceof RateLimitedError));
  });

  it("maps the other codes to their classes", () => {
    assert.ok(toChatEngineError(new ConnectError("x", Code.PermissionDenied)) instanceof PermissionDeniedError);
    assert.ok(toChatEngineError(new ConnectError("x", Code.NotFound)) instanceof NotFoundError);
    assert.ok(toChatEngineError(new ConnectError("x", Code.Unauthenticated)) instanceof UnauthenticatedError);
    const other = toChatEngineError(new ConnectError("busy", Code.FailedPrecondition));
    assert.equal(other.constructor, ChatEngineError);
    assert.equal(other.code, "failed_precondition");
    assert.equal(toChatEngineError(new ConnectError("down", Code.Unavailable)).retryable, true);
  });

  it("turns a plain network failure into a retryable error and passes its own errors through", () => {
    const net = toChatEngineError(new TypeError("fetch failed"));
    assert.ok(net instanceof ChatEngineError);
    assert.equal(net.retryable, true);
    const mine = new NotFoundError("gone");
    assert.equal(toChatEngineError(mine), mine);
  });
});

function event(conv: string, seq: number): StreamItem {
  return create(StreamItemSchema, {
    kind: { case: "event", value: create(ConversationEventSchema, { conversationId: conv, seq: BigInt(seq) }) },
  });
}

async function* items(list: StreamItem[]) {
  for (const item of list) yield { item };
}

describe("dedupe by seq", () => {
  it("SeqCursors accepts each seq once and only above the cursor", () => {
    const c = new SeqCursors([["a", 3]]);
    assert.equal(c.accept("a", 2), false);
    assert.equal(c.accept("a", 3), false);
    assert.equal(c.accept("a", 4), true);
    assert.equal(c.accept("a", 4), false);
    assert.equal(c.accept("b", 1), true);
    c.follow("a", 0);
    assert.equal(c.get("a"), 4, "follow keeps a cursor it has");
    assert.deepEqual(c.list(), [
      { conversationId: "a", lastSeq: 4n },
      { conversationId: "b", lastSeq: 1n },
    ]);
  });

  it("a replay overlapping what was delivered reaches the app once, in order", async () => {
    const cursors = new SeqCursors([["a", 0]]);
    const got: number[] = [];
    const onItem = (i: StreamItem) => {
      if (i.kind.case === "event") got.push(Number(i.kind.value.seq));
    };
    await pumpItems(items([event("a", 1), event("a", 2), event("a", 3)]), cursors, onItem, () => undefined);
    // The reconnect's replay starts before the cursor (e.g. a server that replays from its own
    // older cursor): 2 and 3 are dropped, 4 and 5 delivered.
    await pumpItems(items([event("a", 2), event("a", 3), event("a", 4), event("a", 5)]), cursors, onItem, () => undefined);
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.equal(cursors.get("a"), 5);
  });
});

describe("Reconnector", () => {
  it("retries transient failures with backoff, reports statuses, stops on a final error", async () => {
    const statuses: ConnectionStatus[] = [];
    let attempts = 0;
    let fatal: ChatEngineError | undefined;
    const r = new Reconnector({
      backoff: { initialMs: 5, maxMs: 20 },
      onStatus: (s) => statuses.push(s),
      onFatal: (e) => (fatal = e),
      attempt: async (_signal, connected) => {
        attempts++;
        if (attempts === 1) throw new ConnectError("down", Code.Unavailable);
        if (attempts === 2) {
          connected();
          throw new ConnectError("resync", Code.Aborted);
        }
        throw new ConnectError("origin", Code.PermissionDenied);
      },
    });
    await r.start();
    assert.equal(attempts, 3);
    assert.ok(fatal instanceof PermissionDeniedError);
    assert.deepEqual(statuses, ["reconnecting", "connected", "reconnecting", "closed"]);
  });

  it("renews credentials once on UNAUTHENTICATED, then goes on", async () => {
    let attempts = 0;
    let renewed = 0;
    const r = new Reconnector({
      backoff: { initialMs: 5, maxMs: 10 },
      onStatus: () => undefined,
      onFatal: () => undefined,
      renewCredentials: async () => {
        renewed++;
      },
      attempt: async () => {
        attempts++;
        if (attempts === 1) throw new ConnectError("expired", Code.Unauthenticated);
        if (attempts === 2) throw new ConnectError("expired", Code.Unauthenticated);
        throw new ConnectError("nope", Code.NotFound);
      },
    });
    await r.start();
    assert.equal(renewed, 1, "a second UNAUTHENTICATED in a row is final");
    assert.equal(attempts, 2);
  });

  it("kick() drops a hanging attempt and reconnects at once, without counting a failure", async () => {
    let attempts = 0;
    const statuses: ConnectionStatus[] = [];
    const r = new Reconnector({
      backoff: { initialMs: 60_000, maxMs: 60_000 },
      onStatus: (s) => statuses.push(s),
      onFatal: () => undefined,
      attempt: (signal, connected) => {
        attempts++;
        connected();
        // A stream on a dead network: never ends by itself.
        return new Promise((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted"))));
      },
    });
    const done = r.start();
    await new Promise((res) => setTimeout(res, 10));
    r.kick();
    await new Promise((res) => setTimeout(res, 10));
    assert.equal(attempts, 2);
    assert.deepEqual(statuses, ["connected", "reconnecting", "connected"]);
    r.stop();
    await done;
    assert.equal(attempts, 2);
    assert.equal(r.status, "closed");
  });

  it("kick() cuts a backoff wait short", async () => {
    let attempts = 0;
    const r = new Reconnector({
      backoff: { initialMs: 60_000, maxMs: 60_000 },
      onStatus: () => undefined,
      onFatal: () => undefined,
      attempt: async () => {
        attempts++;
        throw new ConnectError("down", Code.Unavailable);
      },
    });
    const done = r.start();
    await new Promise((res) => setTimeout(res, 10));
    assert.equal(attempts, 1, "waiting a minute before the next attempt");
    r.kick();
    await new Promise((res) => setTimeout(res, 10));
    assert.equal(attempts, 2);
    r.stop();
    await done;
  });

  it("stop() ends a waiting loop at once", async () => {
    const r = new Reconnector({
      backoff: { initialMs: 60_000, maxMs: 60_000 },
      onStatus: () => undefined,
      onFatal: () => undefined,
      attempt: async () => {
        throw new ConnectError("down", Code.Unavailable);
      },
    });
    const done = r.start();
    await new Promise((res) => setTimeout(res, 20));
    r.stop();
    await done;
    assert.equal(r.status, "closed");
  });
});

describe("64-bit seqs", () => {
  it("arrive as bigint from protobuf-es v2 (JS_NUMBER is not honoured) and leave the facade as numbers", () => {
    const wire = create(MessageSchema, {
      id: "m1",
      conversationId: "c1",
      seq: 42n,
      senderType: SenderType.AGENT,
      senderId: "a1",
      text: "hi",
      createTime: timestampFromDate(new Date("2026-01-02T03:04:05Z")),
    });
    assert.equal(typeof wire.seq, "bigint");
    const m = messageOf(wire, (id) => (id === "a1" ? "Ana" : undefined));
    assert.equal(m.seq, 42);
    assert.equal(typeof m.seq, "number");
    assert.equal(m.senderType, "agent");
    assert.equal(m.senderName, "Ana");
    assert.equal(m.sentAt.toISOString(), "2026-01-02T03:04:05.000Z");
    assert.equal(m.editedAt, undefined);
  });
});
