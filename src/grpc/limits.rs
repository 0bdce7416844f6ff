//! Maps tonic's answer to an over-limit message (OUT_OF_RANGE) to RESOURCE_EXHAUSTED, the
//! code gRPC implementations use for "message larger than max", so clients see one meaning.
//! tonic rejects such messages while decoding, before any handler, as a trailers-only reply.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::HeaderValue;
use tower::{Layer, Service};

const TOO_LARGE: &str = "Error, decoded message length too large";

/// Adds [`LimitStatus`] around the router.
#[derive(Clone, Copy, Default)]
pub struct LimitStatusLayer;

impl<S> Layer<S> for LimitStatusLayer {
    type Service = LimitStatus<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LimitStatus { inner }
    }
}

/// Rewrites the status of over-limit rejections.
#[derive(Clone)]
pub struct LimitStatus<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LimitStatus<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            let h = res.headers();
            let over_limit = h.get("grpc-status").is_some_and(|s| s == "11")
                && h.get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .is_some_and(|m| {
                        m.starts_with(&TOO_LARGE.replace(' ', "%20")) || m.starts_with(TOO_LARGE)
                    });
            if over_limit {
                let hs = res.headers_mut();
                hs.insert("grpc-status", HeaderValue::from_static("8"));
                hs.insert(
                    "grpc-message",
                    HeaderValue::from_static("message%20larger%20than%20the%20server%20accepts"),
                );
            }
            Ok(res)
        })
    }
}
