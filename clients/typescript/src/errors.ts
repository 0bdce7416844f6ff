/**
 * Typed errors of the SDK: every failed call or stream surfaces as a {@link ChatEngineError}
 * (or one of its subclasses), never as a raw transport error, so callers can branch with
 * `instanceof` and show the right message (rate limited, origin not allowed, bad field...).
 *
 * @module
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

/** The gRPC status codes, by their canonical lower-case names. */
export type ErrorCode =
  | "canceled"
  | "unknown"
  | "invalid_argument"
  | "deadline_exceeded"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "resource_exhausted"
  | "failed_precondition"
  | "aborted"
  | "out_of_range"
  | "unimplemented"
  | "internal"
  | "unavailable"
  | "data_loss"
  | "unauthenticated";

const CODE_NAMES: Record<number, ErrorCode> = {
  [Code.Canceled]: "canceled",
  [Code.Unknown]: "unknown",
  [Code.InvalidArgument]: "invalid_argument",
  [Code.DeadlineExceeded]: "deadline_exceeded",
  [Code.NotFound]: "not_found",
  [Code.AlreadyExists]: "already_exists",
  [Code.PermissionDenied]: "permission_denied",
  [Code.ResourceExhausted]: "resource_exhausted",
  [Code.FailedPrecondition]: "failed_precondition",
  [Code.Aborted]: "aborted",
  [Code.OutOfRange]: "out_of_range",
  [Code.Unimplemented]: "unimplemented",
  [Code.Internal]: "internal",
  [Code.Unavailable]: "unavailable",
  [Code.DataLoss]: "data_loss",
  [Code.Unauthenticated]: "unauthenticated",
};

/** Any error the server or the connection to it answered. */
export class ChatEngineError extends Error {
  /** The gRPC status code. */
  readonly code: ErrorCode;
  /** The machine-readable reason of a google.rpc.ErrorInfo detail, when the server sent one. */
  readonly reason?: string;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; reason?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ChatEngineError";
    this.code = code;
    this.reason = options?.reason;
  }

  /** True when trying again later may succeed (the server or the network was unavailable). */
  get retryable(): boolean {
    return isRetryableCode(this.code);
  }
}

/** Over a rate limit (RESOURCE_EXHAUSTED with google.rpc.RetryInfo). */
export class RateLimitedError extends ChatEngineError {
  /** How long to wait before trying again, from the server's RetryInfo; 0 when it sent none. */
  readonly retryAfterMs: number;

  constructor(message: string, retryAfterMs: number, options?: { cause?: unknown; reason?: string }) {
    super("resource_exhausted", message, options);
    this.name = "RateLimitedError";
    this.retryAfterMs = retryAfterMs;
  }
}

/** Not allowed: the page's origin is not one of the widget key's domains, another tenant... */
export class PermissionDeniedError extends ChatEngineError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super("permission_denied", message, options);
    this.name = "PermissionDeniedError";
  }
}

/** The conversation (or other object) does not exist for this caller. */
export class NotFoundError extends ChatEngineError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super("not_found", message, options);
    this.name = "NotFoundError";
  }
}

/** One field the server refused, from a google.rpc.BadRequest detail. */
export interface FieldViolation {
  /** The request field, e.g. `"session_id"` or `"identity.proof"`. */
  field: string;
  /** Why it was refused, readable by a person. */
  description: string;
}

/** The request had bad fields; {@link fieldViolations} says which. */
export class InvalidArgumentError extends ChatEngineError {
  /** The fields the server refused (may be empty when it named none). */
  readonly fieldViolations: FieldViolation[];

  constructor(message: string, fieldViolations: FieldViolation[], options?: { cause?: unknown; reason?: string }) {
    super("invalid_argument", message, options);
    this.name = "InvalidArgumentError";
    this.fieldViolations = fieldViolations;
  }
}

/** The credentials (widget key, visitor or agent token) are missing, wrong or expired. */
export class UnauthenticatedError extends ChatEngineError {
  constructor(message: string, options?: { cause?: unknown; reason?: string }) {
    super("unauthenticated", message, options);
    this.name = "UnauthenticatedError";
  }
}

/** Whether a call that failed with `code` may succeed when simply tried again. */
export function isRetryableCode(code: ErrorCode): boolean {
  return code === "unavailable" || code === "unknown" || code === "deadline_exceeded" || code === "internal";
}

/**
 * Turns whatever a Connect call threw into the SDK's typed error. Errors that already are
 * {@link ChatEngineError}s pass through unchanged.
 */
export function toChatEngineError(err: unknown): ChatEngineError {
  if (err instanceof ChatEngineError) {
    return err;
  }
  const ce = ConnectError.from(err);
  const code = CODE_NAMES[ce.code] ?? "unknown";
  const message = ce.rawMessage || code;
  const reason = ce.findDetails(ErrorInfoSchema)[0]?.reason || undefined;
  const options = { cause: err, reason };
  switch (ce.code) {
    case Code.ResourceExhausted: {
      const retry = ce.findDetails(RetryInfoSchema)[0]?.retryDelay;
      const ms = retry ? Number(retry.seconds) * 1000 + Math.ceil(retry.nanos / 1e6) : 0;
      return new RateLimitedError(message, ms, options);
    }
    case Code.PermissionDenied:
      return new PermissionDeniedError(message, options);
    case Code.NotFound:
      return new NotFoundError(message, options);
    case Code.InvalidArgument: {
      const violations = ce
        .findDetails(BadRequestSchema)
        .flatMap((b) => b.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
      return new InvalidArgumentError(message, violations, options);
    }
    case Code.Unauthenticated:
      return new UnauthenticatedError(message, options);
    default:
      return new ChatEngineError(code, message, options);
  }
}
