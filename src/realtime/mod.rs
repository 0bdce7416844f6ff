//! Realtime delivery: the node-local [`hub::Hub`], the bus that carries events between nodes,
//! presence from open streams, live queue positions for waiting visitors, the per-subscriber
//! stream with exact resume, and the ordering rules of a `Connect` session's commands.

pub mod bus;
pub mod hints;
pub mod hub;
pub mod presence;
pub mod queue;
pub mod session;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use stream::{Item, StreamContext};

/// Whether this node can currently deliver events from other nodes.
#[derive(Clone)]
pub struct BusHealth(Option<Arc<AtomicBool>>);

impl BusHealth {
    /// Always healthy (single node, in-process bus).
    pub fn local() -> Self {
        Self(None)
    }
    /// Follows a NATS connection's flag.
    pub fn nats(flag: Arc<AtomicBool>) -> Self {
        Self(Some(flag))
    }
    /// Whether streams may be opened.
    pub fn healthy(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|f| f.load(std::sync::atomic::Ordering::SeqCst))
    }
}
