//! chat-engine: a multi-tenant chat engine served as a gRPC API.
pub mod pb;
