//! The gRPC transport: one tonic server on one port serving gRPC and gRPC-web (HTTP/1.1) with
//! CORS, health, reflection, authentication, size limits and a shutdown with a deadline, and
//! in front of them the browser pages (`web_assets`). Handlers here only validate, scope,
//! call the domain and convert.

mod agent;
mod analytics;
mod auth;
pub(crate) mod codec;
mod conversation;
mod convert;
mod health;
mod limits;
mod pace;
mod queue;
pub mod ratelimit;
mod scope;
mod status;
mod tenant;
mod trace;
mod visitor;
pub mod web_assets;
mod workflow;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Authenticator;
use crate::auth::layer::AuthLayer;
use crate::config::Config;
use crate::domain::Engine;
use crate::domain::limits::Limiter;
use crate::pb;
use crate::realtime::{BusHealth, StreamContext};
use crate::tenancy::SystemCap;

/// A server-streaming response.
pub type Streaming<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Stubs the RPCs of a partly built service that answer UNIMPLEMENTED (a service with none
/// built is simply not registered: the router answers UNIMPLEMENTED for it). The functions are
/// spelled the way `#[async_trait]` expands them, because that attribute runs before this
/// macro does. No service needs it at the moment; it stays for the services still being built
/// (workflows, the queue).
#[allow(unused_macros)]
macro_rules! unimplemented {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _req: tonic::Request<$req>,
            ) -> ::std::pin::Pin<Box<
                dyn ::std::future::Future<Output = Result<tonic::Response<$resp>, tonic::Status>>
                    + Send
                    + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move {
                    Err(tonic::Status::unimplemented(concat!(
                        stringify!($name),
                        " is not available yet"
                    )))
                })
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use unimplemented;

/// What the transport serves: the domain and the realtime parts it adapts, and the signals
/// its health reports.
pub struct Dependencies {
    /// Domain access.
    pub engine: Arc<Engine>,
    /// Credential checks.
    pub auth: Arc<Authenticator>,
    /// Open streams' shared parts.
    pub streams: Arc<StreamContext>,
    /// Whether events from other nodes arrive.
    pub bus: BusHealth,
    /// Whether the database answers; health reports NOT_SERVING while it does not.
    pub database_up: tokio::sync::watch::Receiver<bool>,
    /// The engine's own authority, for AuthService's lookups before credentials are verified.
    pub system: SystemCap,
    /// The node's rate limiter.
    pub limits: Arc<Limiter>,
    /// What the browser pages served beside the API need.
    pub web: web_assets::WebPages,
}

/// Limits and timings of the transport.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// Largest accepted or sent message.
    pub max_message_bytes: usize,
    /// Streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 ping timeout.
    pub keepalive_timeout: Duration,
    /// How long shutdown waits for open calls.
    pub shutdown_grace: Duration,
    /// Origins allowed to preflight; empty allows any.
    pub cors_allowed_origins: Vec<String>,
    /// Where a request's client address comes from.
    pub client_address: ratelimit::ClientAddress,
}

impl From<&Config> for TransportSettings {
    fn from(c: &Config) -> Self {
        Self {
            max_message_bytes: c.max_message_bytes,
            max_concurrent_streams: c.max_concurrent_streams,
            keepalive_interval: Duration::from_secs(c.keepalive_interval_secs),
            keepalive_timeout: Duration::from_secs(c.keepalive_timeout_secs),
            shutdown_grace: Duration::from_secs(c.shutdown_grace_secs),
            cors_allowed_origins: c.cors_allowed_origins.clone(),
            client_address: ratelimit::ClientAddress::from(c),
        }
    }
}

fn cors(settings: &TransportSettings) -> CorsLayer {
    let origins = if settings.cors_allowed_origins.is_empty() {
        // Any page may preflight; each widget call is then checked against its key's domains.
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            settings
                .cors_allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let headers = [
        "authorization",
        "content-type",
        "x-api-key",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "x-request-id",
    ];
    let exposed = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(headers.map(HeaderName::from_static))
        .expose_headers(exposed.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

/// Serves the API on `listener` until `shutdown` resolves, then drains open calls for at
/// most the configured grace period.
pub async fn serve(
    deps: Dependencies,
    settings: TransportSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Dependencies {
        engine,
        auth: authenticator,
        streams,
        bus,
        database_up,
        system,
        limits: limiter,
        web,
    } = deps;
    let gate = ratelimit::Gate::new(limiter, settings.client_address.clone());
    let limit = settings.max_message_bytes;
    macro_rules! limited {
        ($server:ty, $handler:expr) => {
            <$server>::new($handler)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        };
    }

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = health::Health::start(reporter, database_up).await?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    use pb::admin::tenant_service_server::TenantServiceServer;
    use pb::agent_service_server::AgentServiceServer;
    use pb::analytics_service_server::AnalyticsServiceServer;
    use pb::auth_service_server::AuthServiceServer;
    use pb::conversation_service_server::ConversationServiceServer;
    use pb::queue_service_server::QueueServiceServer;
    use pb::visitor_service_server::VisitorServiceServer;
    use pb::workflow_service_server::WorkflowServiceServer;

    let live = crate::domain::analytics::live::LiveWatch::new(
        engine.clone(),
        system,
        streams.shutdown.clone(),
    );
    let router = Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .http2_keepalive_interval(Some(settings.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout))
        .http2_max_header_list_size(16 * 1024)
        .layer(trace::layer())
        // Before gRPC-web, which answers 400 to any other HTTP/1.1 request.
        .layer(web_assets::PagesLayer::new(&web))
        .layer(cors(&settings))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(limits::LimitStatusLayer)
        .layer(AuthLayer::new(authenticator.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(limited!(
            TenantServiceServer<_>,
            tenant::TenantApi::new(engine.clone(), authenticator.clone())
        ))
        .add_service(limited!(
            AuthServiceServer<_>,
            auth::AuthApi::new(engine.clone(), system, gate.clone())
        ))
        .add_service(limited!(
            AgentServiceServer<_>,
            agent::AgentApi::new(engine.clone())
        ))
        .add_service(limited!(
            VisitorServiceServer<_>,
            visitor::VisitorApi::new(streams.clone(), bus.clone(), gate.clone())
        ))
        .add_service(limited!(
            QueueServiceServer<_>,
            queue::QueueApi::new(streams.clone())
        ))
        .add_service(limited!(
            AnalyticsServiceServer<_>,
            analytics::AnalyticsApi::new(engine.clone(), live, streams.shutdown.clone())
        ))
        .add_service(limited!(
            WorkflowServiceServer<_>,
            workflow::WorkflowApi::new(engine.clone())
        ))
        .add_service(limited!(
            ConversationServiceServer<_>,
            conversation::ConversationApi::new(streams.clone(), bus)
        ));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Chat messages are small: without TCP_NODELAY, Nagle's algorithm holds them back for
    // tens of milliseconds.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(Into::into),
        () = shutdown => {}
    }
    // Open streams tell their clients where to resume, then end.
    streams.shutdown.cancel();
    // Load balancers stop sending before connections close.
    health.shutting_down().await;
    let _ = stop_tx.send(());
    let result = match tokio::time::timeout(settings.shutdown_grace, &mut server).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            tracing::warn!(
                grace_secs = settings.shutdown_grace.as_secs(),
                "shutdown grace period over; cutting open calls"
            );
            Ok(())
        }
    };
    // Streams that just ended record their agents going offline; let that land before the
    // database may go away.
    streams.presence.drain(Duration::from_secs(2)).await;
    result
}
