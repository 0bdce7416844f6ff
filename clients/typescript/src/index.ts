/**
 * `@chat-engine/sdk`: the visitor (website widget) facade of chat-engine over gRPC-web.
 * The agent facade is the `@chat-engine/sdk/agent` entry; the operator-only admin API is not
 * part of this package's entries.
 *
 * @example
 * ```ts
 * const sdk = new ChatEngineSDK({ apiKey, baseUrl: "https://chat.example.com" });
 * const visitor = await sdk.initVisitor({ name: "Ada", email: "ada@example.com" });
 * const chat = await sdk.startChat({ visitorId: visitor.id, initialMessage: "Hello!" });
 * chat.onMessage((m) => console.log(m.senderType, m.content));
 * ```
 *
 * @module
 */
export { ChatEngineSDK, Chat } from "./visitor.js";
export type {
  ChatEngineSDKOptions,
  InitVisitorOptions,
  StartChatOptions,
  SendMessageOptions,
  ReadReceiptEvent,
  StorageLike,
} from "./visitor.js";
export type { ConnectionOptions } from "./transport.js";
export type { BackoffOptions } from "./backoff.js";
export { Backoff } from "./backoff.js";
export {
  ChatEngineError,
  RateLimitedError,
  PermissionDeniedError,
  NotFoundError,
  InvalidArgumentError,
  UnauthenticatedError,
  toChatEngineError,
} from "./errors.js";
export type { ErrorCode, FieldViolation } from "./errors.js";
export type * from "./types.js";
