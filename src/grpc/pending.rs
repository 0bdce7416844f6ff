//! Services declared in the public API whose issues have not landed yet. Every RPC answers
//! UNIMPLEMENTED, so clients are generated once and learn clearly what is not there.

use super::unimplemented;
use crate::pb;

/// Placeholder handler for the not-yet-built services.
pub struct Pending;

#[tonic::async_trait]
impl pb::workflow_service_server::WorkflowService for Pending {
    unimplemented! {
        create_workflow(pb::CreateWorkflowRequest) -> pb::CreateWorkflowResponse;
        get_workflow(pb::GetWorkflowRequest) -> pb::GetWorkflowResponse;
        list_workflows(pb::ListWorkflowsRequest) -> pb::ListWorkflowsResponse;
        update_workflow(pb::UpdateWorkflowRequest) -> pb::UpdateWorkflowResponse;
        delete_workflow(pb::DeleteWorkflowRequest) -> pb::DeleteWorkflowResponse;
        reorder_workflows(pb::ReorderWorkflowsRequest) -> pb::ReorderWorkflowsResponse;
        explain_routing(pb::ExplainRoutingRequest) -> pb::ExplainRoutingResponse;
    }
}

#[tonic::async_trait]
impl pb::queue_service_server::QueueService for Pending {
    unimplemented! {
        list_waiting_chats(pb::ListWaitingChatsRequest) -> pb::ListWaitingChatsResponse;
        accept_chat(pb::AcceptChatRequest) -> pb::AcceptChatResponse;
        transfer_chat(pb::TransferChatRequest) -> pb::TransferChatResponse;
        close_chat(pb::CloseChatRequest) -> pb::CloseChatResponse;
        explain_assignment(pb::ExplainAssignmentRequest) -> pb::ExplainAssignmentResponse;
    }
}

#[tonic::async_trait]
impl pb::analytics_service_server::AnalyticsService for Pending {
    unimplemented! {
        get_live_stats(pb::GetLiveStatsRequest) -> pb::GetLiveStatsResponse;
        get_historical_stats(pb::GetHistoricalStatsRequest) -> pb::GetHistoricalStatsResponse;
        list_ratings(pb::ListRatingsRequest) -> pb::ListRatingsResponse;
    }
}
