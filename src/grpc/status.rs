//! The one mapping from [`AppError`] to `tonic::Status`. Internal and unavailable causes are
//! logged here, once, inside the request's span, and never sent: the client sees a generic
//! message. Field problems travel as `google.rpc.BadRequest` details so SDKs can show them
//! per field; a resync travels as `google.rpc.ErrorInfo`.

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
