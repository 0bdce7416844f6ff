//! The command side of one `Connect` session: the pipelining rules, apart from the wire.
//!
//! - No command runs before the session's subscription is live (caught up), so whatever a
//!   command causes, the client's own sends included, reaches the session's stream.
//! - Commands start in the order they arrive: each one's start (checking it, queueing a send
//!   for its seq) finishes before the next command is read.
//! - Up to [`IN_FLIGHT`] started commands wait for their completion (a commit) at once; the
//!   session reads no further command until one of them is answered.
//! - Answers (acks) go out in command order, whatever order the commits land in.
//! - When the client stops sending commands, the started ones are still answered.
//!
//! The transport decides what a command and an ack are; this module only orders them.

use std::pin::Pin;

use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;

/// Commands one session may have in flight.
pub const IN_FLIGHT: usize = 64;

/// A started command: the rest of its work, resolving to its ack.
pub type Pending<A> = Pin<Box<dyn Future<Output = A> + Send>>;

/// The acks of a session's `commands`, in command order. `live` fires once the subscription
/// is live; if it is dropped unfired, no command runs and the stream ends. `start` begins one
/// command and returns the rest of it.
pub fn acks<C, A, S, F, Fut>(
    live: oneshot::Receiver<()>,
    commands: S,
    mut start: F,
) -> impl Stream<Item = A> + Send
where
    S: Stream<Item = C> + Send,
    C: Send,
    A: Send + 'static,
    F: FnMut(C) -> Fut + Send,
    Fut: Future<Output = Pending<A>> + Send,
{
    async_stream::stream! {
        if live.await.is_err() {
            return;
        }
        let mut commands = std::pin::pin!(commands);
        let mut pending = FuturesOrdered::new();
        let mut open = true;
        while open || !pending.is_empty() {
            let next = tokio::select! {
                Some(ack) = pending.next(), if !pending.is_empty() => Some(ack),
                cmd = commands.next(), if open && pending.len() < IN_FLIGHT => {
                    match cmd {
                        Some(cmd) => pending.push_back(start(cmd).await),
                        None => open = false,
                    }
                    None
                }
                else => break,
            };
            if let Some(ack) = next {
                yield ack;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    fn live() -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(());
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn acks_follow_command_order_when_later_commands_finish_first() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let log = started.clone();
        let acks: Vec<u32> = acks(live(), futures_util::stream::iter(0..10u32), move |n| {
            log.lock().unwrap().push(n);
            // Later commands complete sooner.
            let wait = Duration::from_millis(u64::from(100 - n * 10));
            std::future::ready(Box::pin(async move {
                tokio::time::sleep(wait).await;
                n
            }) as Pending<u32>)
        })
        .collect()
        .await;
        assert_eq!(acks, (0..10).collect::<Vec<_>>());
        assert_eq!(*started.lock().unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_in_flight_limit_waits_at_once() {
        let total = IN_FLIGHT + 10;
        let gate = Arc::new(Semaphore::new(0));
        let started = Arc::new(Mutex::new(0usize));
        let (g, s) = (gate.clone(), started.clone());
        let acks = acks(live(), futures_util::stream::iter(0..total), move |n| {
            *s.lock().unwrap() += 1;
            let g = g.clone();
            std::future::ready(Box::pin(async move {
                g.acquire().await.expect("gate").forget();
                n
            }) as Pending<usize>)
        });
        let consumer = tokio::spawn(acks.collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*started.lock().unwrap(), IN_FLIGHT);
        // Answering one lets exactly one more start.
        gate.add_permits(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*started.lock().unwrap(), IN_FLIGHT + 1);
        gate.add_permits(total);
        let acks = consumer.await.unwrap();
        assert_eq!(acks, (0..total).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn no_command_runs_before_the_subscription_is_live() {
        let (tx, rx) = oneshot::channel();
        let started = Arc::new(Mutex::new(0usize));
        let s = started.clone();
        let acks = acks(rx, futures_util::stream::iter(0..3u32), move |n| {
            *s.lock().unwrap() += 1;
            std::future::ready(Box::pin(std::future::ready(n)) as Pending<u32>)
        });
        let consumer = tokio::spawn(acks.collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*started.lock().unwrap(), 0);
        tx.send(()).unwrap();
        assert_eq!(consumer.await.unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_session_that_never_goes_live_runs_nothing() {
        let (tx, rx) = oneshot::channel::<()>();
        drop(tx);
        let started = Arc::new(Mutex::new(0usize));
        let s = started.clone();
        let acks: Vec<u32> = acks(rx, futures_util::stream::iter(0..3u32), move |n| {
            *s.lock().unwrap() += 1;
            std::future::ready(Box::pin(std::future::ready(n)) as Pending<u32>)
        })
        .collect()
        .await;
        assert!(acks.is_empty());
        assert_eq!(*started.lock().unwrap(), 0);
    }
}
