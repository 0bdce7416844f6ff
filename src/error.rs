//! The one error type of the engine and its one mapping to `tonic::Status`.
//!
//! Domain and storage code return [`AppError`]; the gRPC layer converts with `Status::from`.
//! Internal causes are logged here, once, and never sent: the client sees a generic message.
//! Field problems travel as `google.rpc.BadRequest` details so SDKs can show them per field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Field path, e.g. `widget.primary_color`.
    pub field: String,
    /// What is wrong, for humans.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: &str, description: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            description: description.into(),
        }
    }
}

impl From<FieldViolation> for AppError {
    fn from(v: FieldViolation) -> Self {
        AppError::InvalidArgument(vec![v])
    }
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request has invalid fields.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The object does not exist, or belongs to another tenant (never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Credentials are missing, malformed, expired or revoked.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// A unique value is taken, or an idempotency key was reused with another payload.
    #[error("already exists: {0}")]
    AlreadyExists(&'static str),
    /// The object is not in a state that allows this.
    #[error("failed precondition: {0}")]
    FailedPrecondition(&'static str),
    /// A limit was hit.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(&'static str),
    /// A dependency (the database) is unreachable; retrying later may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A stream ends and its client must reconnect and resume from its cursors.
    #[error("resync required: {0}")]
    Resync(&'static str),
    /// A bug or an unexpected failure; the cause is logged, not sent.
    #[error("internal: {0}")]
    Internal(String),
}

/// Result with [`AppError`].
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// A single-field validation error.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        }])
    }
}

/// Collects field violations while validating a request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }
    /// Records a problem with `field`.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_owned(),
            description: description.into(),
        });
    }
    /// Records the error of a field check, if any.
    pub fn check<T>(&mut self, r: Result<T, FieldViolation>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(v) => {
                self.0.push(v);
                None
            }
        }
    }
    /// Ok when nothing was recorded.
    pub fn finish(self) -> AppResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AppError::InvalidArgument(self.0))
        }
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => AppError::NotFound("object"),
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                AppError::AlreadyExists("a unique value is already taken")
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                AppError::Unavailable(info.message().to_owned())
            }
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                AppError::Unavailable(info.message().to_owned())
            }
            other => classify_unknown(other.to_string()),
        }
    }
}

/// Connection-level failures surface from tokio-postgres as plain text; they are retryable.
fn classify_unknown(text: String) -> AppError {
    let lower = text.to_ascii_lowercase();
    if lower.contains("connection") || lower.contains("terminating") || lower.contains("shut") {
        AppError::Unavailable(text)
    } else {
        AppError::Internal(text)
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for AppError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

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
