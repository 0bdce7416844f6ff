//! Generated wire types, servers and clients of `chatengine.v1`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("chatengine.v1");

/// Encoded descriptor set of every chat-engine proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chatengine_descriptor.bin"));
