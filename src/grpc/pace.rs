//! Paces a server stream so that HTTP/2 writes out a burst as it goes instead of queueing it.
//!
//! hyper runs each response stream in its own task, and h2 keeps every chunk the stream
//! hands over in the connection's frame queue until the connection task gets to write it;
//! that queue keeps its largest size for the connection's life. A stream that starts with a burst
//! (the presence of every agent of the tenant, a replay after a reconnect) used to leave
//! ~150 bytes per queued 1 KiB chunk behind on every idle connection: 5 KiB at 250 agents.
//! After [`PACE_BYTES`] handed over without a natural pause, the stream steps aside once so
//! the connection task can write; a stream that keeps up with its source never pauses.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::Stream;
use pin_project_lite::pin_project;

/// Bytes a stream hands over in a row before it lets the connection write them.
pub const PACE_BYTES: usize = 4 * 1024;

/// gRPC's length-prefixed framing adds this much per message.
const FRAME_HEADER: usize = 5;

type Pause = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project! {
    /// A stream of protobuf responses that steps aside after every [`PACE_BYTES`] in a row.
    pub struct Paced<S> {
        #[pin]
        inner: S,
        run: usize,
        pause: Option<Pause>,
    }
}

impl<S> Paced<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            run: 0,
            pause: None,
        }
    }
}

/// Two scheduler turns: after the first, tonic hands its gathered bytes to hyper and polls
/// again at once; only the second leaves the stream's task pending with nothing buffered,
/// so the connection task (woken by the handover) runs before this stream goes on.
fn step_aside() -> Pause {
    Box::pin(async {
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    })
}

impl<S, M, E> Stream for Paced<S>
where
    S: Stream<Item = Result<M, E>>,
    M: prost::Message,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            *this.pause = None;
            *this.run = 0;
        }
        match this.inner.poll_next(cx) {
            Poll::Pending => {
                *this.run = 0;
                Poll::Pending
            }
            Poll::Ready(Some(Ok(m))) => {
                *this.run += m.encoded_len() + FRAME_HEADER;
                if *this.run >= PACE_BYTES {
                    *this.pause = Some(step_aside());
                }
                Poll::Ready(Some(Ok(m)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    type Item = Result<crate::pb::SendMessageRequest, ()>;

    /// `n` messages of about `len` bytes, numbered in their text.
    fn messages(n: usize, len: usize) -> Vec<Item> {
        (0..n)
            .map(|i| {
                Ok(crate::pb::SendMessageRequest {
                    text: format!("{i:0len$}"),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// Passes `items` through a paced stream; returns what came out and how often the
    /// stream was pending on the way.
    async fn pauses(items: Vec<Item>) -> (Vec<Item>, usize) {
        let mut s = std::pin::pin!(Paced::new(futures_util::stream::iter(items)));
        let (mut got, mut pending) = (Vec::new(), 0);
        std::future::poll_fn(|cx| {
            loop {
                match s.poll_next_unpin(cx) {
                    Poll::Ready(Some(item)) => got.push(item),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => {
                        pending += 1;
                        // Woken by the scheduler; poll again as the runtime would.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
        })
        .await;
        (got, pending)
    }

    #[tokio::test]
    async fn a_burst_steps_aside_after_each_pace_and_loses_nothing() {
        // 100 messages of ~200 bytes: ~20 KiB, five paces.
        let (got, pending) = pauses(messages(100, 200)).await;
        assert_eq!(got, messages(100, 200), "every message, in order");
        assert!(pending >= 4, "a 20 KiB burst paused {pending} times");
    }

    #[tokio::test]
    async fn a_short_stream_never_pauses() {
        let (got, pending) = pauses(messages(5, 100)).await;
        assert_eq!((got, pending), (messages(5, 100), 0));
    }
}
