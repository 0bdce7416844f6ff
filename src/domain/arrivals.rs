//! Group commit for InitVisitor calls that claim no identity (nearly all of them): one loop
//! takes every queued arrival and resolves each tenant's share in one
//! transaction, then answers every caller after that commit, as the starter does for chat
//! starts. A batch is a fixed handful of statements for its new visitors: the sessions'
//! locks in key order, the identity setting, the sessions' visitors, then the new visitors
//! and their sessions in one insert each. A returning visitor costs its own update and chat
//! lookup inside the same transaction.
//!
//! What each arrival writes is `visitors::arrival`, the same pure decision the claimed path
//! takes, made in queue order: a session's second arrival in one batch resumes the visitor
//! its first one made. Claims of an identity go through `visitors::init` alone (their locks
//! and lookups are per claim). A batch that fails as a whole is tried again one arrival at
//! a time.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Clock;
use super::batch::{Batcher, Outcome, answer_each, by_tenant};
use super::conversations::Conversation;
use super::events::Publisher;
use super::visitors::{Arrival, Known, VisitorInput, arrival, recent_chats};
use crate::error::{AppError, AppResult};
use crate::ids::VisitorId;
use crate::storage::Db;
use crate::storage::visitors::{self as store, VisitorRow};
use crate::tenancy::TenantScope;

/// Most arrivals in one transaction.
const MAX_BATCH: usize = 256;
/// One loop: a batch holds the calls that arrived while the one before it ran, so one loop's
/// batches are several times bigger than each of four loops' at the same rate (run 1 of
/// BENCHMARKS.md: 6.4 calls a batch against 1.7, 9 statements a routed chat against 13).
const LOOPS: usize = 1;

/// A visitor resolved and committed.
#[derive(Debug, Clone)]
pub struct Arrived {
    /// The visitor as written.
    pub row: VisitorRow,
    /// Their recent chats (none for a new visitor).
    pub chats: Vec<Conversation>,
}

#[derive(Clone)]
struct Job {
    scope: TenantScope,
    input: VisitorInput,
}

type Reply = oneshot::Sender<AppResult<Arrived>>;

/// The queues in front of the arrival loops.
pub struct Arrivals {
    loops: Batcher<(Job, Reply)>,
}

impl Arrivals {
    /// Starts the loops.
    pub fn start(db: Db, publisher: Arc<dyn Publisher>, clock: Arc<dyn Clock>) -> Self {
        let loops = Batcher::start(LOOPS, MAX_BATCH, move |_, batch: Vec<(Job, Reply)>| {
            let (db, publisher, clock) = (db.clone(), publisher.clone(), clock.clone());
            async move {
                let groups = by_tenant(batch, |(j, _)| j.scope.tenant_id())
                    .into_iter()
                    .map(|jobs| {
                        let tenant = jobs[0].0.scope.tenant_id();
                        answer_each(tenant, publisher.as_ref(), jobs, |jobs| {
                            arrive_batch(&db, clock.as_ref(), jobs)
                        })
                    });
                futures_util::future::join_all(groups).await;
            }
        });
        Self { loops }
    }

    /// Creates or resumes the visitor of `input`'s session (which claims no identity) once
    /// its batch has committed.
    pub async fn arrive(&self, scope: TenantScope, input: VisitorInput) -> AppResult<Arrived> {
        let (tx, rx) = oneshot::channel();
        if !self.loops.push(0, (Job { scope, input }, tx)).await {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("the visitor arrivals stopped".into())
}

async fn arrive_batch(db: &Db, clock: &dyn Clock, jobs: Vec<Job>) -> AppResult<Outcome<Arrived>> {
    let scope = jobs[0].scope;
    let now = clock.now();
    let sessions: Vec<&str> = jobs.iter().map(|j| j.input.session_id.as_str()).collect();

    let mut tx = db.tenant_tx(&scope).await?;
    store::lock_sessions(&mut tx, &sessions).await?;
    let setting = store::identity(&tx).await?;
    let mut known: HashMap<String, Known> = store::by_sessions(&mut tx, &sessions)
        .await?
        .iter()
        .map(|(s, v)| (s.clone(), Known::from(v)))
        .collect();

    // Decided in queue order: a session's later arrival finds the visitor its earlier one
    // made or resumed.
    let decided: Vec<AppResult<Arrival>> = jobs
        .iter()
        .map(|j| {
            let a = arrival(
                setting.as_ref(),
                j.input.clone(),
                known.get(&j.input.session_id).copied(),
                None,
                now,
            )?;
            let identified = a.external.is_some();
            known.insert(
                a.session_id.clone(),
                Known {
                    id: a.id,
                    identified,
                },
            );
            Ok(a)
        })
        .collect();

    let new: Vec<&Arrival> = decided
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .filter(|a| a.existing.is_none())
        .collect();
    let mut made: HashMap<VisitorId, VisitorRow> = HashMap::new();
    if !new.is_empty() {
        let rows: Vec<(VisitorId, &_)> = new.iter().map(|a| (a.id, &a.fields)).collect();
        made = store::insert_many(&mut tx, &rows, now)
            .await?
            .into_iter()
            .map(|r| (r.visitor_id, r))
            .collect();
        // Distinct: a session's second arrival in the batch resumes its first's visitor.
        let tied: Vec<(&str, VisitorId)> =
            new.iter().map(|a| (a.session_id.as_str(), a.id)).collect();
        store::add_sessions(&mut tx, &tied, now).await?;
    }
    let mut answers = Vec::with_capacity(decided.len());
    for a in decided {
        answers.push(match a {
            Err(e) => Err(e),
            Ok(a) => match a.existing {
                None => made
                    .get(&a.id)
                    .cloned()
                    .map(|row| Arrived {
                        row,
                        chats: Vec::new(),
                    })
                    .ok_or(AppError::Internal("a new visitor was not stored".into())),
                // The session is theirs already: only what the widget reports changes.
                Some(v) => {
                    let row = store::update(&tx, v, &a.fields, None).await?;
                    let chats = recent_chats(&mut tx, v).await?;
                    Ok(Arrived { row, chats })
                }
            },
        });
    }
    tx.commit().await?;
    Ok((answers, Vec::new()))
}
