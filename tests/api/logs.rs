//! What operators read: a failed call's log line names its method, tenant and request id.

use std::sync::{Mutex, OnceLock};

use chat_engine_client::pb;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tracing_subscriber::fmt::MakeWriter;

use crate::harness::{Options, TestApp, bearer, group, own_cluster, send};

/// Warnings and errors of every server in this test process, as JSON lines.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Installs the process-wide log capture once; servers run in-process, so their logs land in
/// [`LOGS`], and each test picks its lines by its own request id.
fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::WARN)
            .with_writer(|| LOGS.make_writer())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
}

fn lines_with_request_id(id: &str) -> Vec<serde_json::Value> {
    let bytes = LOGS.lock().expect("log buffer").clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["span"]["request_id"] == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_fails_on_the_database_is_logged_with_its_method_tenant_and_request_id() {
    capture();
    let (cluster, _dir, urls) = own_cluster().await;
    let app = TestApp::spawn_with(Options {
        database: Some(urls),
        ..Options::default()
    })
    .await;
    let t = app.tenant("logs").await;
    let (ann, _) = app.agent(&t, "ann").await;
    let conv = group(&app, &t.admin_token, &[&ann]).await;
    // One call that works, so nothing about the token itself needs the database later.
    send(&app, &t.admin_token, &conv, "before the outage")
        .await
        .expect("send");
    cluster.stop().await.expect("stopping postgres");

    let request_id = format!("logs-{}", uuid::Uuid::new_v4().simple());
    let mut req = bearer(
        pb::SendMessageRequest {
            conversation_id: conv.clone(),
            text: "during the outage".into(),
            request_id: String::new(),
        },
        &t.admin_token,
    );
    req.metadata_mut().insert(
        "x-request-id",
        MetadataValue::try_from(request_id.as_str()).expect("ascii"),
    );
    let err = app.conversations().send_message(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        !err.message().contains("during the outage"),
        "the status leaks the body"
    );

    let lines = lines_with_request_id(&request_id);
    let line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "dependency unavailable")
        .unwrap_or_else(|| panic!("no unavailable line for {request_id}: {lines:?}"));
    assert_eq!(
        line["span"]["method"],
        "/chatengine.v1.ConversationService/SendMessage"
    );
    assert_eq!(line["span"]["tenant"], t.tenant_id.as_str());
    for l in &lines {
        assert!(
            !l.to_string().contains("during the outage"),
            "a log line carries the message body: {l}"
        );
    }
}
