/**
 * Builds the Connect transport the facades talk through: gRPC-web over `fetch`
 * (`@connectrpc/connect-web`), the protocol browsers can speak, to the server's one port.
 *
 * @module
 */
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

/** Where and how to reach the server, shared by both facades' options. */
export interface ConnectionOptions {
  /** The server's base URL, e.g. `"https://chat.example.com"`. */
  baseUrl?: string;
  /** The server's host name; `"chat.example.com"` means `https://chat.example.com`. */
  domain?: string;
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Interceptors run on every call, e.g. to add headers (tests set `Origin` this way in Node). */
  interceptors?: Interceptor[];
  /**
   * A transport of your own instead (e.g. `@connectrpc/connect-node`'s
   * createGrpcWebTransport in Node); `baseUrl`, `domain`, `fetch` and `interceptors` are then
   * ignored. The facades send their credentials as call headers, so any transport works.
   */
  transport?: Transport;
}

/** The base URL from `baseUrl`, `domain`, or the page's own origin in a browser. */
export function resolveBaseUrl(o: ConnectionOptions): string {
  if (o.baseUrl) return o.baseUrl.replace(/\/+$/, "");
  if (o.domain) return `https://${o.domain.replace(/\/+$/, "")}`;
  const loc = (globalThis as { location?: { origin?: string } }).location;
  if (loc?.origin && loc.origin !== "null") return loc.origin;
  throw new TypeError("chat-engine: set baseUrl or domain");
}

/** The given transport, or a gRPC-web one to the server. */
export function makeTransport(o: ConnectionOptions): Transport {
  if (o.transport) return o.transport;
  const fetchImpl = o.fetch;
  return createGrpcWebTransport({
    baseUrl: resolveBaseUrl(o),
    // A bare `fetch` reference called as a method of another object throws "Illegal
    // invocation" in browsers; call it unbound.
    fetch: fetchImpl ? (input, init) => fetchImpl(input, init) : undefined,
    interceptors: o.interceptors ?? [],
  });
}
