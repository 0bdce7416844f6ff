//! Batched reads for streams that start following a conversation (a join): the streams of a
//! dispatcher pass's agents, and of the visitors whose chats it assigned, all join at the
//! same moment. Concurrent asks queue here; one loop per partition takes everything queued
//! and reads each tenant's share in one transaction with a fixed number of statements
//! (`conversations::openings_in`), then answers every stream. A batch that fails as a whole
//! is read again one ask at a time.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::batch::{Batcher, Outcome, answer_each, by_tenant};
use super::conversations::{Opening, OpeningAsk, openings_in};
use super::events::Publisher;
use super::participants::Participant;
use crate::error::{AppError, AppResult};
use crate::ids::ConversationId;
use crate::storage::Db;
use crate::tenancy::TenantScope;

/// Most asks in one transaction.
const MAX_BATCH: usize = 256;
/// Loops; a conversation's asks always go to the same one.
const PARTITIONS: usize = 2;

#[derive(Clone, Copy)]
struct Ask {
    scope: TenantScope,
    conv: ConversationId,
    after: i64,
    limit: i64,
}

type Reply = oneshot::Sender<AppResult<Option<Opening>>>;

/// The queues in front of the opening loops.
pub struct Openings {
    loops: Batcher<(Ask, Reply)>,
}

impl Openings {
    /// Starts the loops. Reads publish nothing; the publisher is what the shared answering
    /// code takes.
    pub fn start(db: Db, publisher: Arc<dyn Publisher>) -> Self {
        let loops = Batcher::start(PARTITIONS, MAX_BATCH, move |_, batch: Vec<(Ask, Reply)>| {
            let (db, publisher) = (db.clone(), publisher.clone());
            async move {
                let groups = by_tenant(batch, |(a, _)| a.scope.tenant_id())
                    .into_iter()
                    .map(|asks| {
                        let tenant = asks[0].0.scope.tenant_id();
                        answer_each(tenant, publisher.as_ref(), asks, |asks| {
                            open_batch(&db, asks)
                        })
                    });
                futures_util::future::join_all(groups).await;
            }
        });
        Self { loops }
    }

    /// The [`Opening`] of `conv` for the caller of `scope`: the conversation, its visitor for
    /// an agent, and at most `limit` events after `after`; None when they may not see it.
    pub async fn open(
        &self,
        scope: TenantScope,
        conv: ConversationId,
        after: i64,
        limit: i64,
    ) -> AppResult<Option<Opening>> {
        let partition = (conv.as_uuid().as_u128() % PARTITIONS as u128) as usize;
        let (tx, rx) = oneshot::channel();
        let ask = Ask {
            scope,
            conv,
            after,
            limit,
        };
        if !self.loops.push(partition, (ask, tx)).await {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the stream openings stopped".into())
}

async fn open_batch(db: &Db, asks: Vec<Ask>) -> AppResult<Outcome<Option<Opening>>> {
    let mut read: Vec<OpeningAsk> = Vec::with_capacity(asks.len());
    for a in &asks {
        read.push((Participant::of(&a.scope)?, a.conv, a.after, a.limit));
    }
    let mut tx = db.tenant_tx(&asks[0].scope).await?;
    let opened = openings_in(&mut tx, &read).await?;
    tx.commit().await?;
    Ok((opened.into_iter().map(Ok).collect(), Vec::new()))
}
