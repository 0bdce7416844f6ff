/**
 * Random ids the SDK makes itself: request ids (UUID v4, what the server's idempotency keys
 * expect) and widget session ids.
 *
 * @module
 */

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  globalThis.crypto.getRandomValues(b);
  return b;
}

/** A random UUID v4. Built from getRandomValues, since randomUUID is missing outside secure contexts. */
export function newRequestId(): string {
  const b = randomBytes(16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A new widget session id: 32 hex characters, within the server's 16-128 of [A-Za-z0-9_-]. */
export function newSessionId(): string {
  return [...randomBytes(16)].map((x) => x.toString(16).padStart(2, "0")).join("");
}
