//! `NOTIFY` after commit, on one connection of its own per node: how the spine's notices
//! (see `domain::spine`) reach every node without slowing the commits they announce.
//!
//! PostgreSQL lets one notifying transaction commit at a time (it holds a database-wide lock
//! from queueing its notices until its commit is flushed), so a `NOTIFY` inside every send
//! transaction serialised the writer's commits and cost a fifth of the send throughput. Here
//! a transaction only collects its notices ([`super::TenantTx::announce`]); after its commit
//! they are queued to this node's announcer, which sends whatever is queued in one
//! transaction with `synchronous_commit = off` (a notice is never durable anyway, and without
//! the flush the lock is held for microseconds). Acknowledgements wait for the announcement
//! ([`Announced`]), so an acknowledged event has been announced to every node even if this
//! node dies right after the acknowledgement.

use std::time::Duration;

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::{mpsc, oneshot};

/// Most notices sent in one announcing transaction.
const MAX_NOTICES: usize = 4096;
/// Longest wait for one announcing round trip before its notices are given up.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// A notice: its channel and payload.
pub(crate) type Notice = (&'static str, String);

/// Notices of one committed transaction, and who waits for them to be sent.
struct Job {
    notices: Vec<Notice>,
    done: oneshot::Sender<()>,
}

/// The node's announcer: a queue in front of one task and one connection.
#[derive(Clone)]
pub struct Announcer {
    queue: mpsc::UnboundedSender<Job>,
}

impl Announcer {
    /// Starts the announcing task over `url`; it connects on first use and again after a
    /// failure, and ends once every handle is dropped.
    pub fn start(url: &str) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(url.to_owned(), rx));
        Self { queue }
    }

    /// Queues `notices`; the answer resolves once they were sent (or given up).
    pub(crate) fn send(&self, notices: Vec<Notice>) -> Announced {
        let (done, rx) = oneshot::channel();
        if notices.is_empty() {
            let _ = done.send(());
        } else {
            let _ = self.queue.send(Job { notices, done });
        }
        Announced(rx)
    }
}

/// Resolves once a committed transaction's notices have been sent.
#[must_use = "acknowledge only after the announcement"]
pub struct Announced(oneshot::Receiver<()>);

impl Announced {
    /// An announcement with nothing to wait for.
    pub fn ready() -> Self {
        let (done, rx) = oneshot::channel();
        let _ = done.send(());
        Self(rx)
    }

    /// Waits until the notices were sent to PostgreSQL, or given up after a failure (the
    /// rows are committed either way; nodes then learn of them with a later event).
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

async fn run(url: String, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut conn: Option<AsyncPgConnection> = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].notices.len();
        while count < MAX_NOTICES {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.notices.len();
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
                tracing::warn!(error = %e, notices = count, "could not announce committed events");
            }
            Err(_) => {
                conn = None;
                tracing::warn!(notices = count, "announcing committed events timed out");
            }
        }
        for job in jobs {
            let _ = job.done.send(());
        }
    }
}

async fn announce(
    url: &str,
    conn: &mut Option<AsyncPgConnection>,
    jobs: &[Job],
) -> anyhow::Result<()> {
    if conn.is_none() {
        let mut c = AsyncPgConnection::establish(url).await?;
        c.batch_execute("SET synchronous_commit = off").await?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let (channels, payloads): (Vec<&str>, Vec<&str>) = jobs
        .iter()
        .flat_map(|j| j.notices.iter().map(|(c, p)| (*c, p.as_str())))
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
