//! Carrying events between nodes. Without NATS, events go straight to this node's hub. With
//! NATS, every node publishes to `chatengine.events.<tenant>` and delivers what it receives
//! (its own events included) to its hub. NATS core is at-most-once: a lost event is recovered
//! by seq from PostgreSQL, and losing the connection cuts every local stream off with a resync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::hub::{BUS_LOST, Hub};
use crate::domain::events::{Event, Publisher};

/// Delivers events to this node only.
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    /// A bus over `hub`.
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self { hub })
    }
}

impl Publisher for LocalBus {
    fn publish(&self, event: Event) {
        self.hub.dispatch(event);
    }
}

const SUBJECT_PREFIX: &str = "chatengine.events";
/// Events waiting for the NATS connection; past this, new ones are dropped (and recovered
/// by seq) rather than growing memory.
const OUTBOX: usize = 65_536;

/// Delivers events through NATS to every node.
pub struct NatsBus {
    outbox: mpsc::Sender<Event>,
    healthy: Arc<AtomicBool>,
}

impl NatsBus {
    /// Connects to `url`, subscribes, and starts forwarding.
    pub async fn connect(url: &str, hub: Arc<Hub>) -> anyhow::Result<Arc<Self>> {
        let healthy = Arc::new(AtomicBool::new(true));
        let (h, events_hub) = (healthy.clone(), hub.clone());
        let client = async_nats::ConnectOptions::new()
            .name("chat-engine")
            .event_callback(move |ev| {
                let (h, hub) = (h.clone(), events_hub.clone());
                async move {
                    match ev {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the NATS connection; streams must resync");
                            h.store(false, Ordering::SeqCst);
                            hub.end_all(BUS_LOST);
                        }
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connection (re)established");
                            h.store(true, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            })
            .connect(url)
            .await?;
        let mut sub = client.subscribe(format!("{SUBJECT_PREFIX}.>")).await?;
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match serde_json::from_slice::<Event>(&msg.payload) {
                    Ok(ev) => hub.dispatch(ev),
                    Err(e) => tracing::warn!(error = %e, "undecodable event on the bus"),
                }
            }
        });
        let (outbox, mut rx) = mpsc::channel::<Event>(OUTBOX);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let subject = format!("{SUBJECT_PREFIX}.{}", ev.tenant());
                let Ok(payload) = serde_json::to_vec(&ev) else {
                    continue;
                };
                if let Err(e) = client.publish(subject, payload.into()).await {
                    tracing::warn!(error = %e, "publishing to NATS failed");
                }
            }
        });
        Ok(Arc::new(Self { outbox, healthy }))
    }

    /// Whether the NATS connection is up, as a flag streams can check.
    pub fn health_flag(&self) -> Arc<AtomicBool> {
        self.healthy.clone()
    }
}

impl Publisher for NatsBus {
    fn publish(&self, event: Event) {
        if self.outbox.try_send(event).is_err() {
            tracing::warn!("NATS outbox full; an event will be recovered by seq");
        }
    }
}
