//! The one error type of the engine, [`AppError`], and the field violations it carries.
//!
//! Domain and storage code return [`AppError`]. It knows neither the wire nor the database:
//! the mapping to `tonic::Status` lives in the transport (`grpc::status`), the mapping from
//! diesel and pool errors in `storage::error`, so the domain imports neither.

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
    /// Too many calls: a rate limit allows the next one after `retry_after`.
    #[error("rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// How long until the call would pass.
        retry_after: std::time::Duration,
    },
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
