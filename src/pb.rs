//! Wire types and servers: the messages and clients are `chat_engine_client::pb`'s (one set
//! of types for the server, its tests and every Rust client), the servers are generated here
//! by `build.rs` over them. `chatengine.v1` is at the root of this module, the operator-only
//! `chatengine.admin.v1` under [`admin`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The proto packages, as in `chat_engine_client::pb`, each with its servers.
pub mod chatengine {
    /// `chatengine.v1`: the public API.
    pub mod v1 {
        pub use chat_engine_client::pb::chatengine::v1::*;
        include!(concat!(env!("OUT_DIR"), "/chatengine.v1.servers.rs"));
    }
    /// Operator-only packages.
    pub mod admin {
        /// `chatengine.admin.v1`: tenant administration.
        pub mod v1 {
            pub use chat_engine_client::pb::chatengine::admin::v1::*;
            include!(concat!(env!("OUT_DIR"), "/chatengine.admin.v1.servers.rs"));
        }
    }
}

pub use chatengine::v1::*;

/// `chatengine.admin.v1`, the operator-only API (TenantService).
pub mod admin {
    pub use super::chatengine::admin::v1::*;
}

/// Encoded descriptor set of every chat-engine proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/chatengine_descriptor.bin"));
