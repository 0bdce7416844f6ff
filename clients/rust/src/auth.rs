//! Credentials on every request, as a tonic interceptor: an agent's bearer token, or a
//! widget key (with an optional `Origin` and, after `InitVisitor`, the visitor token) for
//! visitors. The credentials live behind a shared handle, so a refreshed token reaches every
//! client made with a clone of the same [`Auth`].

use std::sync::{Arc, RwLock};

use tonic::metadata::errors::InvalidMetadataValue;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

#[derive(Default)]
struct Credentials {
    bearer: Option<AsciiMetadataValue>,
    api_key: Option<AsciiMetadataValue>,
    origin: Option<AsciiMetadataValue>,
}

/// The interceptor: `authorization: Bearer …`, `x-api-key` and `origin` as set.
///
/// ```
/// use chat_engine_client::Auth;
/// let agent = Auth::bearer("access-token").unwrap();
/// let visitor = Auth::widget("cek_widget_key", Some("https://shop.example")).unwrap();
/// // After InitVisitor, the visitor's calls also carry their token:
/// visitor.set_bearer("visitor-token").unwrap();
/// ```
#[derive(Clone, Default)]
pub struct Auth {
    inner: Arc<RwLock<Credentials>>,
}

fn value(s: &str) -> Result<AsciiMetadataValue, InvalidMetadataValue> {
    MetadataValue::try_from(s)
}

impl Auth {
    /// No credentials (AuthService.Login and Refresh need none).
    pub fn none() -> Self {
        Self::default()
    }

    /// An agent's (or the operator's) access token.
    pub fn bearer(token: &str) -> Result<Self, InvalidMetadataValue> {
        let auth = Self::default();
        auth.set_bearer(token)?;
        Ok(auth)
    }

    /// A tenant's widget key, and the web origin to present (the key must allow it).
    pub fn widget(api_key: &str, origin: Option<&str>) -> Result<Self, InvalidMetadataValue> {
        let creds = Credentials {
            bearer: None,
            api_key: Some(value(api_key)?),
            origin: origin.map(value).transpose()?,
        };
        Ok(Self {
            inner: Arc::new(RwLock::new(creds)),
        })
    }

    /// Replaces the bearer token (after a refresh, or a visitor's `InitVisitor`) for every
    /// clone of this handle.
    pub fn set_bearer(&self, token: &str) -> Result<(), InvalidMetadataValue> {
        let v = value(&format!("Bearer {token}"))?;
        self.write().bearer = Some(v);
        Ok(())
    }

    /// Drops the bearer token.
    pub fn clear_bearer(&self) {
        self.write().bearer = None;
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Credentials> {
        // A panic while holding the lock cannot leave the plain values half-written.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Auth")
            .field("bearer", &c.bearer.as_ref().map(|_| "[redacted]"))
            .field("api_key", &c.api_key.as_ref().map(|_| "[redacted]"))
            .field("origin", &c.origin)
            .finish()
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let c = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let md = req.metadata_mut();
        if let Some(v) = &c.bearer {
            md.insert("authorization", v.clone());
        }
        if let Some(v) = &c.api_key {
            md.insert("x-api-key", v.clone());
        }
        if let Some(v) = &c.origin {
            md.insert("origin", v.clone());
        }
        drop(c);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sends_the_latest_token() {
        let auth = Auth::widget("key-1", Some("https://shop.example")).unwrap();
        let mut clone = auth.clone();
        auth.set_bearer("t2").unwrap();
        let req = clone.call(Request::new(())).unwrap();
        let md = req.metadata();
        assert_eq!(md.get("authorization").unwrap(), "Bearer t2");
        assert_eq!(md.get("x-api-key").unwrap(), "key-1");
        assert_eq!(md.get("origin").unwrap(), "https://shop.example");
        auth.clear_bearer();
        assert!(
            clone
                .call(Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_an_error_not_a_panic() {
        assert!(Auth::bearer("line\nbreak").is_err());
        assert!(Auth::widget("k", Some("bad\u{7f}")).is_err());
        assert!(!format!("{:?}", Auth::bearer("secret").unwrap()).contains("secret"));
    }
}
