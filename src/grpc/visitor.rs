//! VisitorService: the widget-facing API. Only GetWidgetConfig is served so far; the chat
//! RPCs answer UNIMPLEMENTED until external chat lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{Streaming, convert, scope, unimplemented};
use crate::domain::{Engine, tenants};
use crate::pb;
use crate::pb::visitor_service_server::VisitorService;

/// Handler of VisitorService.
pub struct VisitorApi {
    engine: Arc<Engine>,
}

impl VisitorApi {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl VisitorService for VisitorApi {
    async fn get_widget_config(
        &self,
        req: Request<pb::GetWidgetConfigRequest>,
    ) -> Result<Response<pb::GetWidgetConfigResponse>, Status> {
        let s = scope::visitor(&req)?;
        let (t, agents_online) = tenants::widget_config(&self.engine, &s).await?;
        Ok(Response::new(pb::GetWidgetConfigResponse {
            tenant_name: t.name,
            widget: Some(convert::widget_out(t.widget)),
            agents_online,
        }))
    }

    type SubscribeVisitorStream = Streaming<pb::SubscribeVisitorResponse>;

    unimplemented! {
        start_chat(pb::StartChatRequest) -> pb::StartChatResponse;
        send_visitor_message(pb::SendVisitorMessageRequest) -> pb::SendVisitorMessageResponse;
        list_visitor_messages(pb::ListVisitorMessagesRequest) -> pb::ListVisitorMessagesResponse;
        subscribe_visitor(pb::SubscribeVisitorRequest) -> Self::SubscribeVisitorStream;
        set_visitor_typing(pb::SetVisitorTypingRequest) -> pb::SetVisitorTypingResponse;
        end_chat(pb::EndChatRequest) -> pb::EndChatResponse;
        submit_rating(pb::SubmitRatingRequest) -> pb::SubmitRatingResponse;
    }
}
