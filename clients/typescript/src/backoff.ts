/**
 * Reconnect delays: exponential backoff with full jitter, so many clients cut off by the same
 * server restart do not all come back at the same instant.
 *
 * @module
 */

/** How reconnect delays grow. */
export interface BackoffOptions {
  /** First delay's upper bound in ms (default 250). */
  initialMs?: number;
  /** Largest delay in ms (default 10 000). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** Source of randomness in [0, 1), for tests (default Math.random). */
  random?: () => number;
}

/**
 * Delays for successive attempts: attempt n waits a random time in
 * [cap/2, cap] with cap = min(maxMs, initialMs * factor^n). Keeping half of the cap as a floor
 * stops a reconnect loop from hammering the server when the random draw is near zero.
 */
export class Backoff {
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly factor: number;
  private readonly random: () => number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 250;
    this.maxMs = options.maxMs ?? 10_000;
    this.factor = options.factor ?? 2;
    this.random = options.random ?? Math.random;
  }

  /** Failed attempts since the last {@link reset}. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt; each call counts one more failed attempt. */
  next(): number {
    const cap = Math.min(this.maxMs, this.initialMs * Math.pow(this.factor, this.attempt));
    this.attempt++;
    return Math.round(cap / 2 + (this.random() * cap) / 2);
  }

  /** Starts over after a success. */
  reset(): void {
    this.attempt = 0;
  }
}

/** Resolves after `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
