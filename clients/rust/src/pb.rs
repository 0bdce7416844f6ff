//! Generated wire types and clients: `chatengine.v1` at the root of this module, the
//! operator-only `chatengine.admin.v1` under [`admin`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The proto packages, nested as prost's cross-package paths (`super::super::v1::…`) expect.
pub mod chatengine {
    /// `chatengine.v1`: the public API.
    pub mod v1 {
        tonic::include_proto!("chatengine.v1");
    }
    /// Operator-only packages.
    pub mod admin {
        /// `chatengine.admin.v1`: tenant administration.
        pub mod v1 {
            tonic::include_proto!("chatengine.admin.v1");
        }
    }
}

pub use chatengine::v1::*;

/// `chatengine.admin.v1`, the operator-only API (TenantService).
pub mod admin {
    pub use super::chatengine::admin::v1::*;
}
