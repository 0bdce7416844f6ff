/**
 * The resuming event stream shared by both facades: it holds a server stream open, reconnects
 * with backoff and jitter when it drops (server restart, network, `Resync`), and resumes each
 * conversation from the last seq it delivered, dropping anything at or below it, so the app
 * sees every durable event once and in order.
 *
 * @module
 */
import { Backoff, sleep, type BackoffOptions } from "./backoff.js";
import { RateLimitedError, UnauthenticatedError, toChatEngineError, type ChatEngineError } from "./errors.js";
import type { StreamItem } from "./gen/chatengine/v1/conversation_pb.js";
import { seqOf } from "./convert.js";
import type { ConnectionStatus } from "./types.js";

/** The last seq delivered per conversation: the resume point of a stream. */
export class SeqCursors {
  private readonly last = new Map<string, number>();

  /** Starts from the given cursors (conversation id → last seq seen). */
  constructor(initial?: Iterable<[string, number]>) {
    for (const [id, seq] of initial ?? []) this.last.set(id, seq);
  }

  /** The last seq delivered for a conversation, if it is followed. */
  get(conversationId: string): number | undefined {
    return this.last.get(conversationId);
  }

  /**
   * Whether an event is new: true (and the cursor moves to it) when its seq is above the
   * cursor, false for one delivered before (a replay overlapping what was seen).
   */
  accept(conversationId: string, seq: number): boolean {
    const cur = this.last.get(conversationId) ?? 0;
    if (seq <= cur) return false;
    this.last.set(conversationId, seq);
    return true;
  }

  /** Follows a conversation from `seq` unless it is followed already (e.g. a chat just joined). */
  follow(conversationId: string, seq = 0): void {
    if (!this.last.has(conversationId)) this.last.set(conversationId, seq);
  }

  /** Every cursor, as the Subscribe requests want them. */
  list(): { conversationId: string; lastSeq: bigint }[] {
    return [...this.last].map(([conversationId, seq]) => ({ conversationId, lastSeq: BigInt(seq) }));
  }
}

/** What a reconnect loop does on an error: try again (after a delay) or give up. */
export type ErrorVerdict = { retry: true; delayMs?: number } | { retry: false };

/**
 * The default policy: permission, not-found, invalid-argument and failed-precondition errors
 * are final (reconnecting cannot help); a rate limit waits its retry-after; everything else
 * (unavailable, aborted with RESYNC_REQUIRED, a dropped connection) retries with backoff.
 */
export function classifyStreamError(err: ChatEngineError): ErrorVerdict {
  if (err instanceof RateLimitedError) return { retry: true, delayMs: Math.max(err.retryAfterMs, 250) };
  switch (err.code) {
    case "permission_denied":
    case "not_found":
    case "invalid_argument":
    case "failed_precondition":
    case "unimplemented":
    case "already_exists":
    case "out_of_range":
      return { retry: false };
    default:
      return { retry: true };
  }
}

/** Callbacks of a {@link Reconnector}. */
export interface ReconnectorOptions {
  /**
   * One attempt: open the stream and read it until it ends. Call `connected()` once the stream
   * is live (after its replay), which resets the backoff.
   */
  attempt: (signal: AbortSignal, connected: () => void) => Promise<void>;
  /** Connection state changes. */
  onStatus: (s: ConnectionStatus) => void;
  /** A final error: the loop stops after it. */
  onFatal: (err: ChatEngineError) => void;
  /**
   * Called once on UNAUTHENTICATED before retrying (renew the token); throwing makes the
   * error final. Without it, UNAUTHENTICATED is final.
   */
  renewCredentials?: () => Promise<void>;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
}

/** Runs a stream attempt again and again until stopped or a final error. */
export class Reconnector {
  private readonly opts: ReconnectorOptions;
  private readonly controller = new AbortController();
  private readonly backoff: Backoff;
  private statusNow: ConnectionStatus = "connecting";
  private done: Promise<void> | undefined;
  private current: AbortController | undefined;

  constructor(opts: ReconnectorOptions) {
    this.opts = opts;
    this.backoff = new Backoff(opts.backoff);
  }

  /** The current connection state. */
  get status(): ConnectionStatus {
    return this.statusNow;
  }

  /** Starts the loop (once); resolves when it has stopped. */
  start(): Promise<void> {
    this.done ??= this.loop();
    return this.done;
  }

  /** Stops the loop and closes the stream. */
  stop(): void {
    if (!this.controller.signal.aborted) this.controller.abort();
    this.setStatus("closed");
  }

  private setStatus(s: ConnectionStatus): void {
    if (this.statusNow === s) return;
    this.statusNow = s;
    this.opts.onStatus(s);
  }

  /**
   * Drops the current attempt (or the wait before the next) and reconnects at once, e.g.
   * when the browser says it is online again: a stream on a dead network may hang silently.
   */
  kick(): void {
    if (this.controller.signal.aborted) return;
    this.backoff.reset();
    this.current?.abort();
  }

  private async loop(): Promise<void> {
    const stopped = this.controller.signal;
    let renewed = false;
    while (!stopped.aborted) {
      const attempt = new AbortController();
      this.current = attempt;
      const onStop = () => attempt.abort();
      stopped.addEventListener("abort", onStop, { once: true });
      let delay: number;
      try {
        await this.opts.attempt(attempt.signal, () => {
          this.backoff.reset();
          renewed = false;
          this.setStatus("connected");
        });
        if (stopped.aborted) break;
        // The server ended the stream without an error: come back, from the cursors.
        delay = this.backoff.next();
      } catch (e) {
        if (stopped.aborted) break;
        if (attempt.signal.aborted) {
          delay = 0; // kicked
        } else {
          const err = toChatEngineError(e);
          if (err instanceof UnauthenticatedError && this.opts.renewCredentials && !renewed) {
            renewed = true;
            try {
              await this.opts.renewCredentials();
              delay = 0;
            } catch (renewErr) {
              this.fail(toChatEngineError(renewErr));
              break;
            }
          } else {
            const verdict = err instanceof UnauthenticatedError ? { retry: false as const } : classifyStreamError(err);
            if (!verdict.retry) {
              this.fail(err);
              break;
            }
            delay = Math.max(verdict.delayMs ?? 0, this.backoff.next());
          }
        }
      } finally {
        stopped.removeEventListener("abort", onStop);
      }
      this.setStatus("reconnecting");
      // A fresh controller for the wait, so a kick() during it cuts it short.
      const wait = new AbortController();
      this.current = wait;
      const onStopWait = () => wait.abort();
      stopped.addEventListener("abort", onStopWait, { once: true });
      try {
        await sleep(delay, wait.signal);
      } catch {
        if (stopped.aborted) break;
      } finally {
        stopped.removeEventListener("abort", onStopWait);
      }
    }
    this.setStatus("closed");
  }

  private fail(err: ChatEngineError): void {
    this.setStatus("closed");
    if (!this.controller.signal.aborted) this.controller.abort();
    this.opts.onFatal(err);
  }
}

/**
 * Reads one stream of StreamItems, dropping events already delivered (by seq) and feeding the
 * rest to `onItem`; resync items only end the stream (the reconnect resumes from `cursors`).
 */
export async function pumpItems(
  items: AsyncIterable<{ item?: StreamItem }>,
  cursors: SeqCursors,
  onItem: (item: StreamItem) => void,
  connected: () => void,
): Promise<void> {
  for await (const res of items) {
    const item = res.item;
    if (!item) continue;
    switch (item.kind.case) {
      case "event": {
        const ev = item.kind.value;
        if (!cursors.accept(ev.conversationId, seqOf(ev.seq))) continue;
        break;
      }
      case "joined": {
        const c = item.kind.value.conversation;
        // Follow it from the start: a reconnect before its first live event then replays
        // it whole instead of starting live and missing what came in between.
        if (c) cursors.follow(c.id, 0);
        break;
      }
      case "caughtUp":
        connected();
        break;
      case "resync":
        for (const c of item.kind.value.cursors) cursors.follow(c.conversationId, seqOf(c.lastSeq));
        break;
      default:
        break;
    }
    onItem(item);
  }
}

/** Calls every listener, so one that throws cannot stop the others or the stream. */
export class Listeners<T> {
  private readonly set = new Set<(v: T) => void>();

  /** Adds a listener; the returned function removes it. */
  add(cb: (v: T) => void): () => void {
    this.set.add(cb);
    return () => {
      this.set.delete(cb);
    };
  }

  /** Whether anyone listens. */
  get size(): number {
    return this.set.size;
  }

  /** Calls every listener with `v`. */
  emit(v: T): void {
    for (const cb of [...this.set]) {
      try {
        cb(v);
      } catch (e) {
        // An app's callback failing must not break delivery to the others; report it the
        // way the platform reports uncaught errors, without crashing a Node process.
        const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
        if (report) report(e);
        else console.error(e);
      }
    }
  }
}

/**
 * Calls `cb` when the browser reports the network back (`online`); returns the function that
 * stops listening. Does nothing outside browsers.
 */
export function onNetworkBack(cb: () => void): () => void {
  const w = globalThis as { addEventListener?: EventTarget["addEventListener"]; removeEventListener?: EventTarget["removeEventListener"] };
  if (typeof w.addEventListener !== "function" || typeof w.removeEventListener !== "function") return () => undefined;
  w.addEventListener("online", cb);
  return () => w.removeEventListener?.("online", cb);
}
