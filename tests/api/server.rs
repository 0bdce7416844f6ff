//! The transport: health per service, reflection, limits, unimplemented services and graceful
//! shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_engine_client::pb;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::harness::{Options, TestApp, bearer, violated_fields};

/// The services reflection lists, by full name.
pub async fn reflected_services(channel: &tonic::transport::Channel) -> Vec<String> {
    let mut r = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = r
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// What health says about "" and about every `chatengine.*` service reflection lists:
/// the status, or the error code of the check.
pub async fn health_of_every_service(
    channel: &tonic::transport::Channel,
) -> BTreeMap<String, Result<ServingStatus, Code>> {
    let mut names = vec![String::new()];
    names.extend(
        reflected_services(channel)
            .await
            .into_iter()
            .filter(|n| n.starts_with("chatengine.")),
    );
    let mut h = HealthClient::new(channel.clone());
    let mut out = BTreeMap::new();
    for service in names {
        let answer = h
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code());
        out.insert(service, answer);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    let app = TestApp::spawn().await;
    let names = reflected_services(&app.channel).await;
    for s in [
        "chatengine.admin.v1.TenantService",
        "chatengine.v1.AuthService",
        "chatengine.v1.AgentService",
        "chatengine.v1.ConversationService",
        "chatengine.v1.VisitorService",
        "chatengine.v1.WorkflowService",
        "chatengine.v1.QueueService",
        "chatengine.v1.AnalyticsService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_only_for_the_services_that_are_served() {
    let app = TestApp::spawn().await;
    let serving = Ok(ServingStatus::Serving);
    let expected: BTreeMap<String, _> = [
        ("", serving),
        ("chatengine.admin.v1.TenantService", serving),
        ("chatengine.v1.AuthService", serving),
        ("chatengine.v1.AgentService", serving),
        ("chatengine.v1.ConversationService", serving),
        ("chatengine.v1.VisitorService", serving),
        ("chatengine.v1.WorkflowService", serving),
        ("chatengine.v1.QueueService", serving),
        ("chatengine.v1.AnalyticsService", serving),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Every service the API declares has a definite answer (all are served now), and a new
    // one fails this test until someone decides what health says about it.
    assert_eq!(health_of_every_service(&app.channel).await, expected);
    let unknown = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "chatengine.v1.NoSuchService".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serves_then_reports_not_serving_and_shutdown_ends_open_streams() {
    let app = TestApp::spawn_with(Options {
        shutdown_grace_secs: Some(1),
        ..Options::default()
    })
    .await;
    let mut h = HealthClient::new(app.channel.clone());
    let status = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let auth = h
        .check(HealthCheckRequest {
            service: "chatengine.v1.AuthService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(auth, ServingStatus::Serving as i32);

    // An open stream that never ends by itself.
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let server = tokio::spawn(app.shutdown());
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The open watch stream does not keep the process alive past the grace period; the
    // generous bound only keeps a broken shutdown from hanging the suite.
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("shutdown never finished")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_get_clear_statuses() {
    let app = TestApp::spawn().await;
    let big = app
        .auth()
        .login(pb::LoginRequest {
            tenant_slug: "x".into(),
            email: "a@b.example".into(),
            password: "p".repeat(200 * 1024),
        })
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::ResourceExhausted, "{big:?}");

    // Big but under the transport limit: the field limit answers.
    let long = app
        .auth()
        .login(pb::LoginRequest {
            tenant_slug: "x".repeat(100),
            email: "a@b.example".into(),
            password: "p".repeat(2000),
        })
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&long);
    fields.sort();
    assert_eq!(fields, ["password", "tenant_slug"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_command_seeds_a_tenant_whose_admin_can_log_in() {
    use std::io::BufRead;
    let (admin_url, app_url) = crate::harness::fresh_database().await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-engine"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("CHAT_ENGINE_DATABASE_URL", &app_url)
        .env("CHAT_ENGINE_MIGRATION_DATABASE_URL", &admin_url)
        .env("CHAT_ENGINE_DATA_DIR", data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Keep draining stdout for the child's whole life: a closed pipe would kill it.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            let done = line.starts_with("widget api key");
            out.push(line);
            if done {
                break;
            }
        }
        out
    })
    .await
    .unwrap();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("widget api key")),
        "demo output incomplete: {lines:?}"
    );
    let addr = lines[0]
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .expect("address line")
        .to_owned();
    let field = |prefix: &str, key: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split(key).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .expect("credential line")
    };
    let password = field("admin", "password: ");
    let api_key = field("widget api key", ": ");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tokens = pb::auth_service_client::AuthServiceClient::new(channel.clone())
        .login(pb::LoginRequest {
            tenant_slug: "demo".into(),
            email: "admin@demo.example".into(),
            password,
        })
        .await
        .expect("the printed credentials log in")
        .into_inner()
        .tokens
        .unwrap();
    let agents = pb::agent_service_client::AgentServiceClient::new(channel.clone())
        .list_agents(bearer(
            pb::ListAgentsRequest::default(),
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 3);
    assert!(
        agents
            .iter()
            .any(|a| a.skills.iter().any(|s| s.name == "billing"))
    );
    let widget = pb::visitor_service_client::VisitorServiceClient::new(channel)
        .get_widget_config(crate::harness::with_key(
            pb::GetWidgetConfigRequest {},
            &api_key,
            None,
        ))
        .await
        .expect("the printed widget key works")
        .into_inner();
    assert_eq!(widget.tenant_name, "Demo Company");
    let _ = child.kill();
    let _ = child.wait();
}
