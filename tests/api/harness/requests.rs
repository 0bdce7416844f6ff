//! Request metadata (bearer tokens, widget keys), reading field violations, and the calls most
//! tests make (send a message, create a group).

use chat_engine_client::pb;
use tonic::metadata::MetadataValue;

use super::app::TestApp;

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token"),
    );
    r
}

/// A request carrying a widget key and an optional Origin.
pub fn with_key<T>(msg: T, key: &str, origin: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(key).expect("ascii key"),
    );
    if let Some(o) = origin {
        r.metadata_mut()
            .insert("origin", MetadataValue::try_from(o).expect("ascii origin"));
    }
    r
}

/// The field names of a status's BadRequest details.
pub fn violated_fields(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Sends a text message and returns (message id, seq).
pub async fn send(
    app: &TestApp,
    token: &str,
    conv: &str,
    text: &str,
) -> Result<(String, u32), tonic::Status> {
    let r = app
        .conversations()
        .send_message(bearer(
            pb::SendMessageRequest {
                conversation_id: conv.to_owned(),
                text: text.to_owned(),
                request_id: String::new(),
            },
            token,
        ))
        .await?
        .into_inner();
    Ok((r.message_id, r.seq))
}

/// Creates a group of the caller and `others`; returns its id.
pub async fn group(app: &TestApp, token: &str, others: &[&str]) -> String {
    app.conversations()
        .create_conversation(bearer(
            pb::CreateConversationRequest {
                kind: pb::ConversationKind::Group as i32,
                member_agent_ids: others.iter().map(|s| (*s).to_owned()).collect(),
                title: "team".into(),
            },
            token,
        ))
        .await
        .expect("create group")
        .into_inner()
        .conversation
        .expect("conversation")
        .id
}
