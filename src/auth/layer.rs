//! The tower layer that authenticates every request once, before any handler runs. Requests
//! without credentials pass through (public RPCs such as Login and health); wrong credentials
//! are answered with UNAUTHENTICATED or PERMISSION_DENIED right here.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Status;
use tower::{Layer, Service};

use super::Authenticator;
use crate::tenancy::TenantScope;

/// Adds [`AuthService`] around the gRPC router.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer using `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// Authenticates, stores the principal in the request extensions, then calls the inner service.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The clone is not ready; use the instance poll_ready was called on.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            match auth.authenticate(req.headers()).await {
                Ok(Some(p)) => {
                    // The request span (grpc::trace) leaves the tenant for us to fill in.
                    if let Some(scope) = TenantScope::of(&p) {
                        tracing::Span::current()
                            .record("tenant", tracing::field::display(scope.tenant_id()));
                    }
                    req.extensions_mut().insert(p);
                }
                Ok(None) => {}
                Err(e) => return Ok(Status::from(e).into_http()),
            }
            inner.call(req).await
        })
    }
}
