//! The node's spine follower: it hears every spine notice first, passes it on to the node's
//! streams and reactors, and makes sure no committed entry goes unannounced.
//!
//! A committing node announces its spine entries right after its commit (see
//! `storage::announce`); if it dies in between, nobody announces them. Each notice names its
//! entry's position, and positions are gapless per tenant and shard, so a follower that
//! reads the heads (every [`POLL`]) and finds a position it never heard of, still unheard at
//! the next read, fetches that entry and passes it on as if it had been announced. An
//! acknowledged or merely committed event thus reaches every node within two reads, whether
//! or not the node that committed it survived. The bookkeeping is the pure [`Tracker`].

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::spine::{Notice, SpineEvent};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::storage::listen::Notice as Heard;
use crate::storage::{Db, spine as store};
use crate::tenancy::SystemCap;

/// How often the heads are read. An unannounced entry is fetched at the second read that
/// finds it, so within two of these after its commit.
pub const POLL: Duration = Duration::from_millis(250);
/// Most unannounced entries of one shard fetched per read.
const FETCH_LIMIT: usize = 500;

/// What the follower knows of each tenant's shards: which positions it heard of.
#[derive(Debug, Default)]
pub struct Tracker {
    shards: HashMap<(TenantId, i16), Shard>,
    /// Whether the heads were read once: what committed before that is not this node's
    /// concern (streams start from the tables), what committed after it is.
    started: bool,
}

#[derive(Debug, Default)]
struct Shard {
    /// Every position up to here was heard of (or predates the follower).
    low: i64,
    /// Positions above `low + 1` heard of already.
    above: BTreeSet<i64>,
    /// The head at the previous read: what had committed by then.
    committed: i64,
}

impl Shard {
    fn hear(&mut self, pos: i64) {
        if pos <= self.low {
            return;
        }
        self.above.insert(pos);
        while self.above.remove(&(self.low + 1)) {
            self.low += 1;
        }
    }
}

impl Tracker {
    /// A notice of the entry at `pos` arrived.
    pub fn heard(&mut self, tenant: TenantId, shard: i16, pos: i64) {
        // Before the first read, every notice names an entry that read will cover.
        if self.started {
            self.shards.entry((tenant, shard)).or_default().hear(pos);
        }
    }

    /// The heads were read: returns, per shard, the positions that had committed by the
    /// previous read and were never heard of (at most [`FETCH_LIMIT`] each). The first read
    /// starts every shard at its head; a shard that appears later is followed from its
    /// first position.
    pub fn polled(
        &mut self,
        heads: impl IntoIterator<Item = (TenantId, i16, i64)>,
    ) -> Vec<(TenantId, i16, Vec<i64>)> {
        if !self.started {
            self.started = true;
            for (tenant, shard, head) in heads {
                let s = Shard {
                    low: head,
                    above: BTreeSet::new(),
                    committed: head,
                };
                self.shards.insert((tenant, shard), s);
            }
            return Vec::new();
        }
        let mut missing = Vec::new();
        for (tenant, shard, head) in heads {
            let s = self.shards.entry((tenant, shard)).or_default();
            let unheard: Vec<i64> = (s.low + 1..=s.committed)
                .filter(|p| !s.above.contains(p))
                .take(FETCH_LIMIT)
                .collect();
            s.committed = s.committed.max(head);
            if !unheard.is_empty() {
                missing.push((tenant, shard, unheard));
            }
        }
        missing
    }
}

/// Starts the follower over `heard` (the spine channel of this node's listener); returns
/// the notices for the streams and for the reactors, in the order heard, with the
/// unannounced entries it found added.
pub fn start(
    db: Db,
    sys: SystemCap,
    mut heard: mpsc::Receiver<Heard>,
    shutdown: CancellationToken,
) -> (mpsc::Receiver<Heard>, mpsc::Receiver<Heard>) {
    let (streams, streams_rx) = mpsc::channel(4096);
    let (reactors, reactors_rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        let outs = [streams, reactors];
        let mut tracker = Tracker::default();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                h = heard.recv() => {
                    let Some(h) = h else { return };
                    if let Heard::Payload(p) = &h
                        && let Some(Notice { tenant, shard, pos: Some(pos), .. }) = Notice::decode(p)
                    {
                        tracker.heard(tenant, shard, pos);
                    }
                    forward(&outs, h).await;
                }
                _ = tick.tick() => match catch_up(&db, &sys, &mut tracker).await {
                    Ok(found) => {
                        for payload in found {
                            forward(&outs, Heard::Payload(payload)).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the spine heads failed"),
                },
            }
        }
    });
    (streams_rx, reactors_rx)
}

async fn forward(outs: &[mpsc::Sender<Heard>], h: Heard) {
    for out in outs {
        let _ = out.send(h.clone()).await;
    }
}

/// One read of the heads; returns the payloads of the unannounced entries it fetched.
async fn catch_up(db: &Db, sys: &SystemCap, tracker: &mut Tracker) -> AppResult<Vec<String>> {
    let mut tx = db.spine_follower_tx(sys).await?;
    let heads = store::all_heads(&mut tx).await?;
    let missing = tracker.polled(
        heads
            .into_iter()
            .map(|h| (h.tenant_id, h.shard, h.last_pos)),
    );
    let mut payloads = Vec::new();
    for (tenant, shard, positions) in missing {
        for entry in store::entries_at(&mut tx, tenant, shard, &positions).await? {
            let events: Vec<SpineEvent> = serde_json::from_value(entry.events)
                .map_err(|e| AppError::Internal(format!("unreadable spine entry: {e}")))?;
            tracing::info!(%tenant, shard, pos = entry.pos, "found a spine entry nobody announced");
            payloads.extend(Notice::of_entry(tenant, shard, entry.pos, &events).encode());
            tracker.heard(tenant, shard, entry.pos);
        }
    }
    tx.commit().await?;
    Ok(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_unheard_across_two_reads_is_fetched_once() {
        let t = TenantId::new();
        let mut tr = Tracker::default();
        assert!(
            tr.polled([(t, 0, 10)]).is_empty(),
            "first read starts at the head"
        );
        // 11 and 13 are announced; 12 never is.
        tr.heard(t, 0, 11);
        tr.heard(t, 0, 13);
        assert!(
            tr.polled([(t, 0, 13)]).is_empty(),
            "just committed: its announcement may still be on its way"
        );
        assert_eq!(tr.polled([(t, 0, 13)]), vec![(t, 0, vec![12])]);
        tr.heard(t, 0, 12);
        assert!(tr.polled([(t, 0, 13)]).is_empty());
    }

    #[test]
    fn announcements_out_of_order_leave_no_gap() {
        let t = TenantId::new();
        let mut tr = Tracker::default();
        tr.polled([(t, 1, 0)]);
        for p in [3, 1, 2, 5, 4] {
            tr.heard(t, 1, p);
        }
        assert!(tr.polled([(t, 1, 5)]).is_empty());
        assert!(tr.polled([(t, 1, 5)]).is_empty());
    }

    #[test]
    fn a_shard_that_appears_after_the_first_read_is_followed_from_its_start() {
        let (t, u) = (TenantId::new(), TenantId::new());
        let mut tr = Tracker::default();
        tr.polled([(t, 0, 5)]);
        // u's first entries: 1 announced, 2 not, both before the next read.
        tr.heard(u, 3, 1);
        tr.polled([(t, 0, 5), (u, 3, 2)]);
        assert_eq!(tr.polled([(t, 0, 5), (u, 3, 2)]), vec![(u, 3, vec![2])]);
    }

    #[test]
    fn shards_and_tenants_are_tracked_apart() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let mut tr = Tracker::default();
        tr.polled([(a, 0, 0), (b, 0, 0)]);
        tr.heard(a, 0, 1);
        tr.polled([(a, 0, 1), (b, 0, 1)]);
        assert_eq!(tr.polled([(a, 0, 1), (b, 0, 1)]), vec![(b, 0, vec![1])]);
    }

    #[test]
    fn a_long_gap_is_fetched_in_bounded_steps() {
        let t = TenantId::new();
        let mut tr = Tracker::default();
        tr.polled([(t, 2, 0)]);
        tr.polled([(t, 2, 2000)]);
        let first = tr.polled([(t, 2, 2000)]);
        assert_eq!(first[0].2.len(), FETCH_LIMIT);
        assert_eq!(first[0].2[0], 1);
    }
}
