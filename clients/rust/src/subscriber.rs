//! A resuming event stream over `ConversationService.Subscribe` or
//! `VisitorService.SubscribeVisitor`.
//!
//! It keeps the last delivered `seq` per conversation. When the stream breaks (connection
//! lost, the server's `Resync` and ABORTED, a node shutting down, a clean end), the next
//! call to [`ResumingSubscriber::next`] subscribes again from those cursors after a backoff
//! with full jitter; the server replays what was missed, and events at or below a cursor are
//! dropped, so every durable event comes out once, in seq order per conversation. Ephemeral
//! items (typing, presence, queue position, caught-up) pass through as they come, and every
//! reconnect yields a new `caught_up` after its replay.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::Auth;
use crate::pb;

/// A response of a subscription stream: `SubscribeResponse` or `SubscribeVisitorResponse`.
pub trait StreamResponse: prost::Message + Default + Send + 'static {
    /// Its item.
    fn into_item(self) -> Option<pb::StreamItem>;
}

impl StreamResponse for pb::SubscribeResponse {
    fn into_item(self) -> Option<pb::StreamItem> {
        self.item
    }
}

impl StreamResponse for pb::SubscribeVisitorResponse {
    fn into_item(self) -> Option<pb::StreamItem> {
        self.item
    }
}

type Opening<R> = Pin<Box<dyn Future<Output = Result<Streaming<R>, Status>> + Send>>;
type Opener<R> = Box<dyn FnMut(Vec<pb::ConversationCursor>) -> Opening<R> + Send>;

/// Waits between reconnects: random in `[0, min(cap, base * 2^n))` after the n-th failure
/// in a row ("full jitter", so clients cut off together do not come back together).
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << failures.min(16))
            .min(self.cap);
        // A fresh RandomState is randomly keyed: a jitter source without a rand dependency.
        let r = RandomState::new().hash_one(failures);
        ceiling.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// Codes after which subscribing again is the cure.
fn resumable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
    )
}

/// The resuming stream; see the module docs.
pub struct ResumingSubscriber<R> {
    open: Opener<R>,
    stream: Option<Streaming<R>>,
    cursors: HashMap<String, u32>,
    backoff: Backoff,
    failures: u32,
    reconnects: u64,
}

impl<R: StreamResponse> ResumingSubscriber<R> {
    /// A subscriber that opens its stream with `open` (given the cursors to resume from),
    /// starting from `cursors` (conversation id, last seq seen; 0 replays everything;
    /// conversations without one start live).
    pub fn new<F, Fut>(mut open: F, cursors: impl IntoIterator<Item = (String, u32)>) -> Self
    where
        F: FnMut(Vec<pb::ConversationCursor>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<tonic::Response<Streaming<R>>, Status>> + Send + 'static,
    {
        let open: Opener<R> = Box::new(move |c| {
            let fut = open(c);
            Box::pin(async move { fut.await.map(tonic::Response::into_inner) })
        });
        Self {
            open,
            stream: None,
            cursors: cursors.into_iter().collect(),
            backoff: Backoff::default(),
            failures: 0,
            reconnects: 0,
        }
    }

    /// Uses `backoff` between reconnects.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The last seq delivered per conversation: where a resume starts.
    pub fn cursors(&self) -> &HashMap<String, u32> {
        &self.cursors
    }

    /// How many times the stream was opened again after a break.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The next item. Broken streams are resumed inside; an error is a status that another
    /// subscribe would not cure (UNAUTHENTICATED, NOT_FOUND, …). After one, renew the
    /// credentials (the shared [`Auth`]) and call `next` again: it resumes from the cursors.
    pub async fn next(&mut self) -> Result<pb::StreamItem, Status> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                let cursors = self.cursor_list();
                match (self.open)(cursors).await {
                    Ok(s) => self.stream = Some(s),
                    Err(s) if resumable(&s) => self.pause().await,
                    Err(s) => return Err(s),
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(r)) => {
                    self.failures = 0;
                    if let Some(item) = r.into_item().and_then(|i| self.accept(i)) {
                        return Ok(item);
                    }
                }
                // The server ended the stream without an error: resume as after a break.
                Ok(None) => self.pause().await,
                Err(s) if resumable(&s) => self.pause().await,
                Err(s) => {
                    self.stream = None;
                    return Err(s);
                }
            }
        }
    }

    fn cursor_list(&self) -> Vec<pb::ConversationCursor> {
        let mut list: Vec<_> = self
            .cursors
            .iter()
            .map(|(c, s)| pb::ConversationCursor {
                conversation_id: c.clone(),
                last_seq: *s,
            })
            .collect();
        list.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        list
    }

    async fn pause(&mut self) {
        self.stream = None;
        tokio::time::sleep(self.backoff.delay(self.failures)).await;
        self.failures = self.failures.saturating_add(1);
        self.reconnects += 1;
    }

    /// Advances the cursors; None for an event already delivered.
    fn accept(&mut self, item: pb::StreamItem) -> Option<pb::StreamItem> {
        use pb::stream_item::Kind;
        match &item.kind {
            Some(Kind::Event(e)) => {
                let last = self.cursors.entry(e.conversation_id.clone()).or_insert(0);
                if e.seq <= *last {
                    return None;
                }
                *last = e.seq;
            }
            // Joined is followed by the events from the join on; should the stream break
            // before the first of them, a resume from 0 replays rather than loses them.
            Some(Kind::Joined(j)) => {
                if let Some(c) = &j.conversation {
                    self.cursors.entry(c.id.clone()).or_insert(0);
                }
            }
            Some(Kind::Resync(r)) => {
                for c in &r.cursors {
                    let last = self.cursors.entry(c.conversation_id.clone()).or_insert(0);
                    *last = (*last).max(c.last_seq);
                }
            }
            _ => {}
        }
        Some(item)
    }
}

impl ResumingSubscriber<pb::SubscribeResponse> {
    /// An agent's stream of every conversation they belong to, over `channel` with `auth`.
    pub fn agent(
        channel: Channel,
        auth: Auth,
        cursors: impl IntoIterator<Item = (String, u32)>,
    ) -> Self {
        let client = pb::conversation_service_client::ConversationServiceClient::with_interceptor(
            channel, auth,
        );
        Self::new(
            move |cursors| {
                let mut c = client.clone();
                async move { c.subscribe(pb::SubscribeRequest { cursors }).await }
            },
            cursors,
        )
    }
}

impl ResumingSubscriber<pb::SubscribeVisitorResponse> {
    /// A visitor's stream of their chats, over `channel` with `auth` (widget key and
    /// visitor token).
    pub fn visitor(
        channel: Channel,
        auth: Auth,
        cursors: impl IntoIterator<Item = (String, u32)>,
    ) -> Self {
        let client =
            pb::visitor_service_client::VisitorServiceClient::with_interceptor(channel, auth);
        Self::new(
            move |cursors| {
                let mut c = client.clone();
                async move {
                    c.subscribe_visitor(pb::SubscribeVisitorRequest { cursors })
                        .await
                }
            },
            cursors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_ceiling_and_varies() {
        let b = Backoff::default();
        let waits: Vec<_> = (0..64).map(|_| b.delay(3)).collect();
        assert!(waits.iter().all(|w| *w < Duration::from_millis(1600)));
        assert!(waits.iter().any(|w| *w != waits[0]));
        assert!((0..64).all(|_| b.delay(30) < b.cap));
    }
}
