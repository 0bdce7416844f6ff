//! Request spans: every call runs in a span `rpc` naming its method (the gRPC path), a request
//! id and, once the auth layer knows it, the tenant. The span is entered while the handler runs
//! and while its response body (a stream's items included) is produced, so whatever is logged
//! for a call, an internal error above all, carries them.
//!
//! tower-http's trace layer does the entering; its own request and failure logs stay off, since
//! the status mapping already logs what operators need (internal and unavailable causes) and a
//! client's NOT_FOUND is no server event.

use http::{HeaderMap, Request};
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, TraceLayer};
use tracing::Span;

/// Header a client may name its request with, so its logs and ours can be matched.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client request id kept; a longer one is replaced by a fresh id.
const MAX_REQUEST_ID: usize = 64;

/// Longest method path written to the span; unknown paths are client-chosen.
const MAX_METHOD: usize = 128;

/// Makes the span of one call.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        let path = req.uri().path();
        let method = path.get(..MAX_METHOD).unwrap_or(path);
        let request_id = client_request_id(req.headers())
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        // At ERROR level so that the span is enabled whenever the errors logged in it are,
        // whatever the log filter.
        tracing::error_span!("rpc", method, request_id, tenant = tracing::field::Empty,)
    }
}

/// The client's `x-request-id` when it is short and plain (letters, digits, `-_.:`), so it
/// cannot forge log lines or bloat them.
fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    let id = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID && id.chars().all(plain)).then_some(id)
}

/// The layer that runs every call in its [`RequestSpan`].
pub type RequestSpanLayer =
    TraceLayer<SharedClassifier<GrpcErrorsAsFailures>, RequestSpan, (), (), (), (), ()>;

/// The request-span layer, to go outermost so that every other layer runs inside the span.
pub fn layer() -> RequestSpanLayer {
    TraceLayer::new_for_grpc()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(())
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use tonic::Status;
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::error::AppError;

    const METHOD: &str = "/chatengine.v1.ConversationService/SendMessage";

    /// The JSON log lines in `logs`.
    fn lines(logs: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
        let bytes = logs.lock().expect("log buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8 logs")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect()
    }

    /// A handler failing the way real ones do: an internal error mapped to its status.
    async fn failing(
        _: Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        Ok(Status::from(AppError::Internal("the disk is on fire".into())).into_http())
    }

    /// Calls `failing` through the layer with the production (JSON) log format and returns
    /// the span fields of the "internal error" line.
    async fn log_of_failed_call(request_id: Option<&str>) -> serde_json::Value {
        // Leaked, so the subscriber's writer may borrow it for as long as it likes.
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || logs.make_writer())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut req = Request::builder().uri(METHOD);
        if let Some(id) = request_id {
            req = req.header(REQUEST_ID_HEADER, id);
        }
        let mut svc = ServiceBuilder::new().layer(layer()).service_fn(failing);
        let res = svc
            .ready()
            .await
            .expect("ready")
            .call(req.body(tonic::body::Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(res.headers()["grpc-status"], "13");
        let line = lines(logs)
            .into_iter()
            .find(|l| l["fields"]["message"] == "internal error")
            .expect("the internal error is logged");
        assert_eq!(line["fields"]["error.cause"], "the disk is on fire");
        line["span"].clone()
    }

    #[tokio::test]
    async fn an_internal_errors_log_line_carries_the_method_and_the_clients_request_id() {
        let span = log_of_failed_call(Some("req-42:a.b_c")).await;
        assert_eq!(span["name"], "rpc");
        assert_eq!(span["method"], METHOD);
        assert_eq!(span["request_id"], "req-42:a.b_c");
    }

    #[tokio::test]
    async fn without_a_sane_client_id_the_log_line_carries_a_fresh_uuid_v7() {
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for given in [None, Some("two words"), Some("a\"b"), Some(long.as_str())] {
            let span = log_of_failed_call(given).await;
            assert_eq!(span["method"], METHOD);
            let id = span["request_id"].as_str().expect("a request id");
            let uuid = uuid::Uuid::try_parse(id).expect("a uuid");
            assert_eq!(uuid.get_version_num(), 7, "{given:?} gave {id}");
        }
    }
}
