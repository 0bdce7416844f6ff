//! Reading a Subscribe stream: the next item, the end of the replay, the next durable event, with
//! a guard so a broken stream fails the test instead of hanging the suite.

use std::time::Duration;

use chat_engine_client::pb;
use tonic::transport::Channel;

use super::app::TestApp;
use super::requests::bearer;

/// An open Subscribe stream with helpers to wait for items.
pub struct Events {
    inner: tonic::Streaming<pb::SubscribeResponse>,
}

/// A guard against a broken stream hanging the suite; not a timing goal.
const WAIT: Duration = Duration::from_secs(20);

impl Events {
    /// Subscribes with `cursors` (conversation id, last seq) over the app's shared connection.
    pub async fn open(
        app: &TestApp,
        token: &str,
        cursors: &[(&str, u32)],
    ) -> Result<Self, tonic::Status> {
        Self::open_on(app.channel.clone(), token, cursors).await
    }

    /// Subscribes over `channel`.
    pub async fn open_on(
        channel: Channel,
        token: &str,
        cursors: &[(&str, u32)],
    ) -> Result<Self, tonic::Status> {
        let req = pb::SubscribeRequest {
            cursors: cursors
                .iter()
                .map(|(c, s)| pb::ConversationCursor {
                    conversation_id: (*c).to_owned(),
                    last_seq: *s,
                })
                .collect(),
        };
        let inner = pb::conversation_service_client::ConversationServiceClient::new(channel)
            .subscribe(bearer(req, token))
            .await?
            .into_inner();
        Ok(Self { inner })
    }

    /// The next item; Err with the status when the stream ends with one.
    pub async fn next(&mut self) -> Result<Option<pb::stream_item::Kind>, tonic::Status> {
        match tokio::time::timeout(WAIT, self.inner.message()).await {
            Ok(Ok(Some(r))) => Ok(r.item.and_then(|i| i.kind)),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no stream item within {WAIT:?}"),
        }
    }

    /// Skips to the end of the replay (CaughtUp), returning the durable events before it.
    pub async fn caught_up(&mut self) -> Vec<pb::ConversationEvent> {
        let mut out = Vec::new();
        loop {
            match self
                .next()
                .await
                .expect("stream failed")
                .expect("stream ended")
            {
                pb::stream_item::Kind::CaughtUp(_) => return out,
                pb::stream_item::Kind::Event(e) => out.push(e),
                _ => {}
            }
        }
    }

    /// The next durable event, skipping ephemeral items.
    pub async fn event(&mut self) -> pb::ConversationEvent {
        loop {
            match self
                .next()
                .await
                .expect("stream failed")
                .expect("stream ended")
            {
                pb::stream_item::Kind::Event(e) => return e,
                _ => continue,
            }
        }
    }

    /// The next item matching `f`.
    pub async fn until<T>(&mut self, mut f: impl FnMut(&pb::stream_item::Kind) -> Option<T>) -> T {
        loop {
            let item = self
                .next()
                .await
                .expect("stream failed")
                .expect("stream ended");
            if let Some(v) = f(&item) {
                return v;
            }
        }
    }
}

/// The text of a posted-message event, or None.
pub fn posted_text(e: &pb::ConversationEvent) -> Option<&str> {
    match &e.kind {
        Some(pb::conversation_event::Kind::MessagePosted(m)) => Some(&m.text),
        _ => None,
    }
}
