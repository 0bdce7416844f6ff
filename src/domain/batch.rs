//! The loop behind every group commit (sends, chat ends): callers queue jobs, and one loop per
//! partition takes everything queued so far as one batch, so that under load one transaction
//! and one fsync serve many callers while a lone job still goes through at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::events::{ConversationEvent, Event, Publisher};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;

/// The queues in front of a set of batching loops.
pub struct Batcher<J> {
    queues: Vec<mpsc::Sender<J>>,
}

impl<J: Send + 'static> Batcher<J> {
    /// Starts `partitions` loops; each hands `handle` its index and batches of at most
    /// `max_batch` jobs, one batch at a time, in queue order.
    pub fn start<F, Fut>(partitions: usize, max_batch: usize, handle: F) -> Self
    where
        F: Fn(usize, Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = Arc::new(handle);
        let queues = (0..partitions.max(1))
            .map(|partition| {
                let (queue, mut rx) = mpsc::channel(max_batch * 4);
                let handle = handle.clone();
                tokio::spawn(async move {
                    while let Some(first) = rx.recv().await {
                        let mut batch = vec![first];
                        while batch.len() < max_batch {
                            match rx.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        handle(partition, batch).await;
                    }
                });
                queue
            })
            .collect();
        Self { queues }
    }

    /// Queues a job on `partition`'s loop (modulo the number of loops), behind the jobs
    /// queued there before it; false when the loop has stopped.
    pub async fn push(&self, partition: usize, job: J) -> bool {
        let q = &self.queues[partition % self.queues.len()];
        q.send(job).await.is_ok()
    }
}

/// A batch split by tenant (a transaction is one tenant's), each share in queue order.
pub fn by_tenant<J>(batch: Vec<J>, tenant: impl Fn(&J) -> TenantId) -> Vec<Vec<J>> {
    let mut groups: HashMap<TenantId, Vec<J>> = HashMap::new();
    for job in batch {
        groups.entry(tenant(&job)).or_default().push(job);
    }
    groups.into_values().collect()
}

/// What one attempt at a batch gives: each job's answer, in order, and the events it
/// committed.
pub type Outcome<A> = (Vec<AppResult<A>>, Vec<ConversationEvent>);

/// Runs `attempt` over one tenant's jobs and answers each caller after the commit, with the
/// committed events published first (a node killed right after its answers has then most
/// likely published what they acknowledge). When the batch fails as a whole, each job is
/// tried alone, so one bad job never fails its neighbours.
pub async fn answer_each<J, A, F, Fut>(
    tenant: TenantId,
    publisher: &dyn Publisher,
    jobs: Vec<(J, oneshot::Sender<AppResult<A>>)>,
    attempt: F,
) where
    J: Clone,
    F: Fn(Vec<J>) -> Fut,
    Fut: Future<Output = AppResult<Outcome<A>>>,
{
    let (jobs, replies): (Vec<J>, Vec<_>) = jobs.into_iter().unzip();
    let publish = |events: Vec<ConversationEvent>| {
        for event in events {
            publisher.publish(Event::Durable { tenant, event });
        }
    };
    match attempt(jobs.clone()).await {
        Ok((answers, events)) => {
            publish(events);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, jobs = jobs.len(), "batch failed; trying its jobs one by one");
            for (job, reply) in jobs.iter().zip(replies) {
                let answer = match attempt(vec![job.clone()]).await {
                    Ok((mut answers, events)) => {
                        publish(events);
                        answers.pop().unwrap_or_else(|| {
                            Err(AppError::Internal("job left unanswered".into()))
                        })
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_by_tenant_keeping_queue_order() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let jobs = vec![(a, 1), (b, 2), (a, 3), (b, 4), (a, 5)];
        let mut groups = by_tenant(jobs, |j| j.0);
        groups.sort_by_key(|g| g[0].1);
        assert_eq!(
            groups,
            vec![vec![(a, 1), (a, 3), (a, 5)], vec![(b, 2), (b, 4)]]
        );
    }

    #[tokio::test]
    async fn jobs_queued_while_a_batch_runs_make_the_next_batch() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Vec<u32>>();
        let (gate_tx, gate) = tokio::sync::watch::channel(false);
        let b = Batcher::start(1, 8, move |_, batch: Vec<u32>| {
            let seen_tx = seen_tx.clone();
            let mut gate = gate.clone();
            async move {
                let _ = seen_tx.send(batch);
                // Each batch holds the loop until the test lets it go.
                let _ = gate.wait_for(|open| *open).await;
            }
        });
        assert!(b.push(0, 1).await);
        assert_eq!(seen.recv().await.unwrap(), vec![1]);
        for j in 2..=4 {
            assert!(b.push(0, j).await);
        }
        gate_tx.send(true).unwrap();
        assert_eq!(seen.recv().await.unwrap(), vec![2, 3, 4]);
    }
}
