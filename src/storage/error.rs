//! The mapping from diesel and connection-pool errors to [`AppError`]: lost connections and
//! serialization failures are retryable (UNAVAILABLE), a taken unique value is ALREADY_EXISTS,
//! anything else is internal.

use crate::error::AppError;

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
