//! The README's Rust snippet (the lines between the `snippet` markers): a website visitor
//! starts a chat, an agent logs in, goes online, is assigned the chat and answers it.
//! `cargo run -p chat-engine-client --example quickstart -- URL WIDGET_KEY TENANT EMAIL PASSWORD`
//! against a server (e.g. `chat-engine demo`); the server's tests run [`quickstart`].

use chat_engine_client::pb::agent_service_client::AgentServiceClient;
use chat_engine_client::pb::auth_service_client::AuthServiceClient;
use chat_engine_client::pb::conversation_service_client::ConversationServiceClient;
use chat_engine_client::pb::stream_item::Kind;
use chat_engine_client::pb::visitor_service_client::VisitorServiceClient;
use chat_engine_client::{Auth, ResumingSubscriber, channel, pb};

/// Runs the snippet; returns the id of the chat the agent answered.
pub async fn quickstart(
    url: &str,
    widget_key: &str,
    tenant: &str,
    email: &str,
    password: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    // snippet:start
    let ch = channel(url)?; // e.g. "http://localhost:50051"

    // A website visitor: the widget key (and origin), then the visitor token.
    let visitor = Auth::widget(widget_key, Some("https://shop.example"))?;
    let mut widget = VisitorServiceClient::with_interceptor(ch.clone(), visitor.clone());
    let init = widget
        .init_visitor(pb::InitVisitorRequest {
            session_id: "a-browser-session-0001".into(),
            name: "Ada".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    visitor.set_bearer(&init.visitor_token)?;
    let start = pb::StartChatRequest {
        initial_message: "Hi, do you ship to Spain?".into(),
        ..Default::default()
    };
    widget.start_chat(start).await?;

    // An agent: log in, go online with a stream that resumes by seq, answer the chat.
    let login = pb::LoginRequest {
        tenant_slug: tenant.into(),
        email: email.into(),
        password: password.into(),
    };
    let tokens = AuthServiceClient::new(ch.clone()).login(login).await?;
    let agent = Auth::bearer(&tokens.into_inner().tokens.unwrap_or_default().access_token)?;
    let status = pb::SetMyStatusRequest {
        status: pb::AgentStatus::Available.into(),
    };
    AgentServiceClient::with_interceptor(ch.clone(), agent.clone())
        .set_my_status(status)
        .await?;
    let mut events = ResumingSubscriber::agent(ch.clone(), agent.clone(), []);
    let chat = loop {
        if let Some(Kind::Joined(j)) = events.next().await?.kind {
            break j.conversation.unwrap_or_default();
        }
    };
    let reply = pb::SendMessageRequest {
        conversation_id: chat.id.clone(),
        text: "Hello Ada! Yes, we do.".into(),
        request_id: String::new(), // set a UUID to make retries safe
    };
    ConversationServiceClient::with_interceptor(ch, agent)
        .send_message(reply)
        .await?;
    // snippet:end
    Ok(chat.id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, key, tenant, email, password] = args.as_slice() else {
        return Err("usage: quickstart URL WIDGET_KEY TENANT EMAIL PASSWORD".into());
    };
    let chat = quickstart(url, key, tenant, email, password).await?;
    println!("answered chat {chat}");
    Ok(())
}
