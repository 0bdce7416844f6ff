//! `NOTIFY` after commit, on one connection of its own per node: how the spine's notices
//! (see `domain::spine`) reach every node without slowing the commits they announce.
//!
//! PostgreSQL lets one notifying transaction commit at a time (it holds a database-wide lock
//! from queueing its notices until its commit is flushed), so a `NOTIFY` inside every send
//! transaction serialised the writer's commits and cost a fifth of the send throughput. Here
//! a transaction only collects its notices ([`super::TenantTx::announce`]); after its commit
//! they are queued to this node's announcer, which sends whatever is queued in one
//! transaction with `synchronous_commit = off` (a notice is never durable anyway, and without
//! the flush the lock is held for microseconds). Nothing waits for it: a node that dies
//! between a commit and its announcement leaves a gap in the spine positions the other nodes
//! heard, and they fetch what is in it (`domain::follower`).

use std::time::Duration;

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::mpsc;

/// Most notices sent in one announcing transaction.
const MAX_NOTICES: usize = 4096;
/// How long the announcer gathers notices after the first one before it sends them: under
/// load a send batch commits every few milliseconds, and each notifying transaction costs
/// this connection's backend and every listening one a wakeup (together a tenth of a core
/// at 7,000 messages a second when each batch had its own). The other nodes' streams hear
/// of a commit this much later; this node's own streams do not wait for it.
const GATHER: Duration = Duration::from_millis(5);
/// Longest wait for one announcing round trip before its notices are given up.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// A notice: its channel and payload.
pub(crate) type Notice = (&'static str, String);

/// The node's announcer: a queue in front of one task and one connection.
#[derive(Clone)]
pub struct Announcer {
    queue: mpsc::UnboundedSender<Vec<Notice>>,
}

impl Announcer {
    /// Starts the announcing task over `url`; it connects on first use and again after a
    /// failure, and ends once every handle is dropped.
    pub fn start(url: &str) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(url.to_owned(), rx));
        Self { queue }
    }

    /// Queues `notices` to be sent as soon as possible.
    pub(crate) fn send(&self, notices: Vec<Notice>) {
        if !notices.is_empty() {
            let _ = self.queue.send(notices);
        }
    }
}

async fn run(url: String, mut rx: mpsc::UnboundedReceiver<Vec<Notice>>) {
    let mut conn: Option<AsyncPgConnection> = None;
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(GATHER).await;
        let mut jobs = vec![first];
        let mut count = jobs[0].len();
        while count < MAX_NOTICES {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let sent = tokio::time::timeout(ANNOUNCE_TIMEOUT, announce(&url, &mut conn, &jobs)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                conn = None;
                tracing::warn!(error = %e, notices = count, "could not announce committed events; nodes will find them in the spine");
            }
            Err(_) => {
                conn = None;
                tracing::warn!(
                    notices = count,
                    "announcing committed events timed out; nodes will find them in the spine"
                );
            }
        }
    }
}

async fn announce(
    url: &str,
    conn: &mut Option<AsyncPgConnection>,
    jobs: &[Vec<Notice>],
) -> anyhow::Result<()> {
    if conn.is_none() {
        let mut c = AsyncPgConnection::establish(url).await?;
        c.batch_execute("SET synchronous_commit = off").await?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let (channels, payloads): (Vec<&str>, Vec<&str>) = jobs
        .iter()
        .flat_map(|j| j.iter().map(|(c, p)| (*c, p.as_str())))
        .unzip();
    // One statement, so one transaction: its notices are delivered together, in order.
    super::sql::prepared(
        "SELECT count(pg_notify(c, p)) FROM unnest($1::text[], $2::text[]) AS n(c, p)",
    )
    .bind::<Array<Text>, _>(channels)
    .bind::<Array<Text>, _>(payloads)
    .execute(c)
    .await?;
    Ok(())
}
