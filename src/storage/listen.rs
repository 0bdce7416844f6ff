//! PostgreSQL `LISTEN` on one dedicated connection per node, fanned out to the in-process
//! consumers of each channel. PostgreSQL delivers a `NOTIFY` to every listening node when the
//! transaction that sent it commits (see `announce` for who sends the spine's), which makes it
//! the carrier of "something committed" between nodes, with or without NATS.
//!
//! The connection is kept alive with a ping and re-opened when it fails. Notices sent while
//! it was down are lost, so every consumer is told [`Notice::Reconnected`] after a gap and must
//! catch up from the tables themselves.
//!
//! Kept small and hand-written: diesel-async already exposes the notification stream, and the
//! crates that wrap LISTEN bring a second PostgreSQL driver.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a channel's consumer receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A `NOTIFY` payload on the channel.
    Payload(String),
    /// The listening connection was lost and is back: notices of the gap are gone.
    Reconnected,
}

/// How often an idle listening connection is checked.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Wait before reconnecting after a failure.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Collects the channels to listen on, then runs the listening task.
pub struct Listener {
    url: String,
    channels: Vec<(&'static str, mpsc::Sender<Notice>)>,
}

impl Listener {
    /// A listener over `url` with no channels yet.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            channels: Vec::new(),
        }
    }

    /// Subscribes to `channel` (a plain lower-case identifier).
    pub fn channel(&mut self, channel: &'static str) -> mpsc::Receiver<Notice> {
        debug_assert!(channel.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let (tx, rx) = mpsc::channel(4096);
        self.channels.push((channel, tx));
        rx
    }

    /// Connects (waiting until the first connection is up, so nothing committed after this
    /// returns is missed) and listens in the background until `shutdown`.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let conn = self.connect().await?;
        tokio::spawn(self.run(conn, shutdown));
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<AsyncPgConnection> {
        let mut conn = AsyncPgConnection::establish(&self.url).await?;
        let sql: String = self
            .channels
            .iter()
            .map(|(c, _)| format!("LISTEN {c};"))
            .collect();
        conn.batch_execute(&sql).await?;
        Ok(conn)
    }

    async fn run(self, mut conn: AsyncPgConnection, shutdown: CancellationToken) {
        loop {
            let lost = self.pump(&mut conn, &shutdown).await;
            if !lost {
                return;
            }
            tracing::warn!("lost the LISTEN connection to PostgreSQL; reconnecting");
            conn = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
                match self.connect().await {
                    Ok(c) => break c,
                    Err(e) => tracing::debug!(error = %e, "LISTEN reconnect failed"),
                }
            };
            tracing::info!("LISTEN connection to PostgreSQL re-established");
            for (_, tx) in &self.channels {
                let _ = tx.send(Notice::Reconnected).await;
            }
        }
    }

    /// Forwards notices until the connection fails (true) or shutdown (false).
    async fn pump(&self, conn: &mut AsyncPgConnection, shutdown: &CancellationToken) -> bool {
        loop {
            {
                let notices = conn.notifications_stream();
                tokio::pin!(notices);
                let ping = tokio::time::sleep(PING_EVERY);
                tokio::pin!(ping);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = &mut ping => break,
                        n = notices.next() => n,
                    };
                    let Some(Ok(n)) = next else {
                        return true;
                    };
                    for (c, tx) in &self.channels {
                        if *c == n.channel {
                            let _ = tx.send(Notice::Payload(n.payload.clone())).await;
                        }
                    }
                }
            }
            // A quiet connection may have died without a word; a round trip tells.
            if conn.batch_execute("SELECT 1").await.is_err() {
                return true;
            }
        }
    }
}
