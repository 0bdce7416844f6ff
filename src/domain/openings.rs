//! Batched reads for streams: what a stream reads when it opens (its participant's
//! conversations, with their last seq) and when it starts following a conversation (a join).
//! Both come in bursts: a StartChat batch answers many visitors who then subscribe, a
//! dispatcher pass's agents and visitors join their chats at the same moment, a restarted
//! node's clients reconnect together. Concurrent asks queue here; one loop per partition
//! takes everything queued and reads each tenant's share in one transaction with a fixed
//! number of statements, then answers every stream. A batch that fails as a whole is read
//! again one ask at a time.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::batch::{Batcher, Outcome, answer_each, by_tenant};
use super::conversations::{Opening, OpeningAsk, openings_in};
use super::events::Publisher;
use super::participants::Participant;
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, UserId, VisitorId};
use crate::storage::Db;
use crate::storage::conversations as store;
use crate::tenancy::TenantScope;

/// Most asks in one transaction.
const MAX_BATCH: usize = 256;
/// Loops; a participant's asks always go to the same one.
const PARTITIONS: usize = 2;

#[derive(Clone, Copy)]
enum Ask {
    /// The caller's conversations.
    Memberships(TenantScope),
    /// One conversation's opening.
    Open {
        scope: TenantScope,
        conv: ConversationId,
        after: i64,
        limit: i64,
    },
}

impl Ask {
    fn scope(&self) -> TenantScope {
        match self {
            Ask::Memberships(scope) | Ask::Open { scope, .. } => *scope,
        }
    }
}

/// What one ask reads.
enum Read {
    Memberships(Vec<(ConversationId, i64)>),
    Opened(Option<Box<Opening>>),
}

type Reply = oneshot::Sender<AppResult<Read>>;

/// The queues in front of the stream reads' loops.
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
                let groups = by_tenant(batch, |(a, _)| a.scope().tenant_id())
                    .into_iter()
                    .map(|asks| {
                        let tenant = asks[0].0.scope().tenant_id();
                        answer_each(tenant, publisher.as_ref(), asks, |asks| {
                            read_batch(&db, asks)
                        })
                    });
                futures_util::future::join_all(groups).await;
            }
        });
        Self { loops }
    }

    /// The caller's conversations (an agent's memberships, a visitor's chats), each with its
    /// current last seq.
    pub async fn memberships(&self, scope: TenantScope) -> AppResult<Vec<(ConversationId, i64)>> {
        let key = match Participant::of(&scope)? {
            Participant::Agent(u) => u.as_uuid().as_u128(),
            Participant::Visitor(v) => v.as_uuid().as_u128(),
            Participant::System => {
                return Err(AppError::PermissionDenied("the engine holds no stream"));
            }
        };
        match self.ask(key, Ask::Memberships(scope)).await? {
            Read::Memberships(m) => Ok(m),
            Read::Opened(_) => Err(mismatched()),
        }
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
        let ask = Ask::Open {
            scope,
            conv,
            after,
            limit,
        };
        match self.ask(conv.as_uuid().as_u128(), ask).await? {
            Read::Opened(o) => Ok(o.map(|o| *o)),
            Read::Memberships(_) => Err(mismatched()),
        }
    }

    async fn ask(&self, key: u128, ask: Ask) -> AppResult<Read> {
        let partition = (key % PARTITIONS as u128) as usize;
        let (tx, rx) = oneshot::channel();
        if !self.loops.push(partition, (ask, tx)).await {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the stream reads stopped".into())
}

fn mismatched() -> AppError {
    AppError::Internal("a stream read answered another kind of ask".into())
}

async fn read_batch(db: &Db, asks: Vec<Ask>) -> AppResult<Outcome<Read>> {
    let mut agents: Vec<UserId> = Vec::new();
    let mut visitors: Vec<VisitorId> = Vec::new();
    let mut opens: Vec<OpeningAsk> = Vec::new();
    for a in &asks {
        match *a {
            Ask::Memberships(scope) => match Participant::of(&scope)? {
                Participant::Agent(u) => agents.push(u),
                Participant::Visitor(v) => visitors.push(v),
                Participant::System => {
                    return Err(AppError::PermissionDenied("the engine holds no stream"));
                }
            },
            Ask::Open {
                scope,
                conv,
                after,
                limit,
            } => opens.push((Participant::of(&scope)?, conv, after, limit)),
        }
    }
    let mut tx = db.tenant_tx(&asks[0].scope()).await?;
    let mut held: HashMap<Participant, Vec<(ConversationId, i64)>> = HashMap::new();
    if !agents.is_empty() {
        for (u, c, seq) in store::memberships_of(&mut tx, &agents).await? {
            held.entry(Participant::Agent(u))
                .or_default()
                .push((c, seq));
        }
    }
    if !visitors.is_empty() {
        for (v, c, seq) in store::visitors_conversations(&mut tx, &visitors).await? {
            held.entry(Participant::Visitor(v))
                .or_default()
                .push((c, seq));
        }
    }
    let mut opened = match opens.is_empty() {
        true => Vec::new(),
        false => openings_in(&mut tx, &opens).await?,
    }
    .into_iter();
    tx.commit().await?;
    let answers = asks
        .iter()
        .map(|a| match a {
            Ask::Memberships(scope) => {
                let who = Participant::of(scope)?;
                Ok(Read::Memberships(
                    held.get(&who).cloned().unwrap_or_default(),
                ))
            }
            Ask::Open { .. } => opened
                .next()
                .map(|o| Read::Opened(o.map(Box::new)))
                .ok_or_else(|| AppError::Internal("an opening went unread".into())),
        })
        .collect();
    Ok((answers, Vec::new()))
}
