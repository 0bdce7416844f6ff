//! Broadcast mode: the in-process ceiling of the event hub, with no network and no database.

use std::time::Instant;

use super::Args;
use super::report::{per_second, round};

/// Messages pushed through the hub in broadcast mode.
const BROADCAST_MESSAGES: u64 = 1_000_000;

/// The in-process ceiling: one million message events through the hub to two subscribers
/// that read concurrently, with no network and no database.
pub(super) async fn run(args: &Args) -> anyhow::Result<()> {
    use crate::domain::events::{ConversationEvent, Event, EventKind, Message};
    use crate::domain::participants::Participant;
    use crate::ids::{ConversationId, MessageId, TenantId, UserId};
    use crate::realtime::hub::Hub;

    let hub = Hub::new(65_536);
    let (tenant, conv) = (TenantId::new(), ConversationId::new());
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut sub = hub.subscribe(tenant, Participant::Agent(UserId::new()), None);
        hub.follow(&sub, conv);
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while n < BROADCAST_MESSAGES {
                if sub.recv().await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        }));
    }
    let started = Instant::now();
    let text = "a typical short chat message of about fifty bytes!".to_owned();
    let sender = UserId::new();
    for seq in 1..=BROADCAST_MESSAGES {
        let at = chrono::Utc::now();
        hub.dispatch(Event::Durable {
            tenant,
            event: ConversationEvent {
                conversation_id: conv,
                seq: seq as i64,
                at,
                kind: EventKind::MessagePosted(Message {
                    id: MessageId::new(),
                    conversation_id: conv,
                    seq: seq as i64,
                    sender: Participant::Agent(sender),
                    text: text.clone(),
                    created_at: at,
                    edited_at: None,
                    deleted: false,
                }),
            },
        });
        if seq % 4096 == 0 {
            // Let the readers drain so the bounded queues never cut them off.
            tokio::task::yield_now().await;
        }
    }
    let mut delivered = 0;
    for r in readers {
        delivered += r.await?;
    }
    let elapsed = started.elapsed();
    let per_s = per_second(BROADCAST_MESSAGES, elapsed);
    println!("chat-engine loadtest: broadcast (in-process hub, no network, no database)");
    println!(
        "  {BROADCAST_MESSAGES} messages to 2 subscribers in {:.2} s: {per_s:.0} msgs/s, {} deliveries",
        elapsed.as_secs_f64(),
        delivered
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "broadcast",
                "messages": BROADCAST_MESSAGES,
                "subscribers": 2,
                "deliveries": delivered,
                "duration_s": round(elapsed.as_secs_f64(), 3),
                "messages_per_s": round(per_s, 1),
            })
        );
    }
    Ok(())
}
