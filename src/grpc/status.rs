//! The one mapping from [`AppError`] to `tonic::Status`. Internal and unavailable causes are
//! logged here, once, inside the request's span, and never sent: the client sees a generic
//! message. Field problems travel as `google.rpc.BadRequest` details so SDKs can show them
//! per field; a resync travels as `google.rpc.ErrorInfo`. A Connect ack carries the same
//! status as a `google.rpc.Status` message ([`rpc_status`]).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::AppError;

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        match e {
            AppError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let summary = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(Code::InvalidArgument, summary, details)
            }
            AppError::NotFound(what) => Status::not_found(format!("{what} not found")),
            AppError::Unauthenticated(why) => Status::unauthenticated(why),
            AppError::PermissionDenied(why) => Status::permission_denied(why),
            AppError::AlreadyExists(why) => Status::already_exists(why),
            AppError::FailedPrecondition(why) => Status::failed_precondition(why),
            AppError::ResourceExhausted(why) => Status::resource_exhausted(why),
            AppError::RateLimited { retry_after } => {
                // Whole milliseconds, rounded up: a client that waits exactly this long passes.
                let millis = retry_after.as_nanos().div_ceil(1_000_000);
                let retry_after = std::time::Duration::from_millis(millis as u64);
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("rate limit exceeded; retry in {millis} ms"),
                    ErrorDetails::with_retry_info(Some(retry_after)),
                )
            }
            AppError::Unavailable(cause) => {
                tracing::warn!(error.cause = %cause, "dependency unavailable");
                Status::unavailable("service temporarily unavailable, retry")
            }
            AppError::Resync(reason) => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    "RESYNC_REQUIRED",
                    "chatengine",
                    std::collections::HashMap::from([("cause".to_owned(), reason.to_owned())]),
                );
                Status::with_error_details(
                    Code::Aborted,
                    format!("reconnect and resume from your cursors ({reason})"),
                    details,
                )
            }
            AppError::Internal(cause) => {
                tracing::error!(error.cause = %cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// `status` as a `google.rpc.Status` message, details included: what a unary call carries in
/// `grpc-status-details-bin`, for answers that travel inside a stream (Connect acks).
pub fn rpc_status(status: &Status) -> tonic_types::pb::Status {
    // A status built with details already holds the whole `google.rpc.Status`, encoded.
    if !status.details().is_empty()
        && let Ok(full) = <tonic_types::pb::Status as prost::Message>::decode(status.details())
    {
        return full;
    }
    tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

/// An OK `google.rpc.Status`.
pub fn rpc_ok() -> tonic_types::pb::Status {
    tonic_types::pb::Status {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Violations;
    use tonic_types::RpcStatusExt;

    #[test]
    fn rate_limited_is_resource_exhausted_with_the_wait_rounded_up_in_retry_info() {
        let wait = std::time::Duration::from_micros(1500);
        let status = Status::from(AppError::RateLimited { retry_after: wait });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(info.retry_delay, Some(std::time::Duration::from_millis(2)));
    }

    #[test]
    fn field_violations_survive_into_the_message_form() {
        let mut v = Violations::new();
        v.add("text", "must not be empty");
        let status = Status::from(v.finish().unwrap_err());
        let rpc = rpc_status(&status);
        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        assert_eq!(rpc.message, status.message());
        let bad = rpc.get_details_bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "text");
    }

    #[test]
    fn a_status_without_details_keeps_its_code_and_message() {
        let rpc = rpc_status(&Status::failed_precondition("already subscribed"));
        assert_eq!(rpc.code, Code::FailedPrecondition as i32);
        assert_eq!(rpc.message, "already subscribed");
        assert!(rpc.details.is_empty());
    }
}
