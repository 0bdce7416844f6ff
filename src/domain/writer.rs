//! Group commit for sends. Concurrent sends queue here; one loop takes everything queued,
//! writes each tenant's share in one transaction and answers every send after that commit.
//! Every sender, whatever kind of participant, is checked by the one rule, [`admits`].
//! A batch is two round trips, since on a busy machine each one costs about as much as the
//! statements in it:
//! 1. the `BEGIN`, then idempotency (request ids stored before), agent memberships, and one
//!    statement for the row locks (which also say whose each conversation is) and the seqs
//!    of every send not refused yet, taken under those locks as if all will be written;
//! 2. the seqs of sends refused after all given back (the rows are still locked, so nobody
//!    saw them), one statement for the messages (which are their own `message_posted`
//!    events) and the spine entry, and the `COMMIT`.
//!
//! A lone send goes through at once; under load, one commit carries many messages, which is
//! what lifts throughput past one-fsync-per-message. A batch that fails as a whole is written
//! again one send at a time (a batch of one each), so one bad send never fails its
//! neighbours. This is the only way a message is written: a lone send is a batch of one.
//! Each batch records its conversations' new seqs in the event spine before it commits, and
//! this node announces them to every node right after (see `storage::announce`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Clock;
use super::batch::{Batcher, by_tenant};
use super::conversations::{Kind, Sent, message_row};
use super::events::{ConversationEvent, Event, EventKind, Message, Publisher};
use super::participants::{ConversationAccess, Participant, admits};
use super::spine::{self, SHARDS, SpineEvent};
use crate::error::{AppError, AppResult};
use crate::ids::{ConversationId, MessageId, TenantId, UserId, VisitorId};
use crate::storage::Db;
use crate::storage::conversations as store;
use crate::storage::messages;
use crate::tenancy::TenantScope;

/// Most sends written in one transaction.
const MAX_BATCH: usize = 512;
/// Independent batching loops, one per spine shard. Each owns a share of the conversations,
/// so while one waits for its commit the others write, and PostgreSQL flushes their commits
/// together; and a batch touches one spine shard only.
const PARTITIONS: usize = SHARDS as usize;

/// One queued send, validated by the caller; the writer decides whether the sender may post.
pub struct SendJob {
    /// Scope of the sender.
    pub scope: TenantScope,
    /// Conversation.
    pub conv: ConversationId,
    /// Who sends.
    pub sender: Participant,
    /// Text.
    pub text: String,
    /// Idempotency key and the payload hash stored with it.
    pub request: Option<(uuid::Uuid, Vec<u8>)>,
}

/// Where the writer answers a send.
type Reply = oneshot::Sender<AppResult<Sent>>;

/// The queues in front of the batching loops, one per partition of conversations.
pub struct Writer {
    loops: Batcher<(SendJob, Reply)>,
}

impl Writer {
    /// Starts one loop per partition.
    pub fn start(db: Db, publisher: Arc<dyn Publisher>, clock: Arc<dyn Clock>) -> Self {
        let loops = Batcher::start(
            PARTITIONS,
            MAX_BATCH,
            move |_, batch: Vec<(SendJob, Reply)>| {
                let (db, publisher, clock) = (db.clone(), publisher.clone(), clock.clone());
                async move {
                    let groups = by_tenant(batch, |(j, _)| j.scope.tenant_id())
                        .into_iter()
                        .map(|jobs| write_group(&db, publisher.as_ref(), clock.as_ref(), jobs));
                    futures_util::future::join_all(groups).await;
                }
            },
        );
        Self { loops }
    }

    /// Queues a send behind those queued before it: sends of one conversation take seqs in
    /// queue order, so a caller that queues one after the other keeps its order. `None`
    /// when the writer has stopped.
    pub async fn enqueue(&self, job: SendJob) -> Option<Queued> {
        // A conversation always lands in the same partition: its sends are batched together
        // and no two partitions ever wait for each other's row locks.
        let partition = spine::shard_of_conversation(job.conv) as usize;
        let (tx, rx) = oneshot::channel();
        self.loops
            .push(partition, (job, tx))
            .await
            .then_some(Queued(rx))
    }
}

/// A queued send's answer, once its batch has committed.
pub struct Queued(oneshot::Receiver<AppResult<Sent>>);

impl Queued {
    /// The answer, after commit.
    pub async fn answer(self) -> AppResult<Sent> {
        self.0
            .await
            .unwrap_or_else(|_| Err(AppError::Unavailable("the writer stopped".into())))
    }
}

async fn write_group(
    db: &Db,
    publisher: &dyn Publisher,
    clock: &dyn Clock,
    jobs: Vec<(SendJob, Reply)>,
) {
    let scope = jobs[0].0.scope;
    let (jobs, replies): (Vec<SendJob>, Vec<Reply>) = jobs.into_iter().unzip();
    let announce = |events: Vec<ConversationEvent>| {
        for event in events {
            publisher.publish(Event::Durable {
                tenant: scope.tenant_id(),
                event,
            });
        }
    };
    match write_batch(db, clock, &scope, &jobs).await {
        Ok((answers, events)) => {
            // The fast path first: a node killed right after its acknowledgements has then
            // most likely published what they acknowledge.
            announce(events);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, sends = jobs.len(), "batch failed; writing its sends one by one");
            for (job, reply) in jobs.iter().zip(replies) {
                let one = std::slice::from_ref(job);
                let mut result = write_batch(db, clock, &scope, one).await;
                // A concurrent retry with the same request_id won the insert: the second
                // look finds its answer.
                if matches!(result, Err(AppError::AlreadyExists(_))) && job.request.is_some() {
                    result = write_batch(db, clock, &scope, one).await;
                }
                let answer = match result {
                    Ok((mut answers, events)) => {
                        announce(events);
                        answers.pop().unwrap_or_else(|| Err(unanswered()))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

type BatchResult = (Vec<AppResult<Sent>>, Vec<ConversationEvent>);

async fn write_batch(
    db: &Db,
    clock: &dyn Clock,
    scope: &TenantScope,
    jobs: &[SendJob],
) -> AppResult<BatchResult> {
    let mut answers: Vec<Option<AppResult<Sent>>> = (0..jobs.len()).map(|_| None).collect();

    // The engine's sends have no sender id to key a retry by: refused rather than written
    // without the promise a request id makes.
    for (i, j) in jobs.iter().enumerate() {
        if j.request.is_some() && j.sender.id().is_none() {
            answers[i] = Some(Err(AppError::FailedPrecondition(
                "sends of the engine carry no request_id",
            )));
        }
    }
    let keyed: Vec<(usize, uuid::Uuid, uuid::Uuid)> = jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| answers[*i].is_none())
        .filter_map(|(i, j)| Some((i, j.sender.id()?, j.request.as_ref()?.0)))
        .collect();
    // One lookup per distinct (conversation, agent), however many sends they made.
    let pairs: HashSet<(ConversationId, UserId)> = jobs
        .iter()
        .filter_map(|j| Some((j.conv, j.sender.agent()?)))
        .collect();
    // Seqs are taken in the first round trip for every send not refused yet, as if each
    // will be written: almost all are. What a refused send took is given back before commit
    // (the rows stay locked until then, so nobody sees it).
    let mut taken: HashMap<ConversationId, i64> = jobs.iter().map(|j| (j.conv, 0)).collect();
    for (i, j) in jobs.iter().enumerate() {
        if answers[i].is_none() {
            *taken.entry(j.conv).or_default() += 1;
        }
    }
    let mut convs: Vec<ConversationId> = taken.keys().copied().collect();
    convs.sort();
    let ks: Vec<i64> = convs.iter().map(|c| taken[c]).collect();
    let now = clock.now();

    // One round trip: the BEGIN, which request ids were stored before, which agents who
    // send are members, and the locks on the conversations (which say whose each one is:
    // its tenant, kind and visitor) with the seqs taken under them.
    let tx = db.tenant_tx_pipelined(scope).await?;
    let (stored, members, locked) = {
        let senders: Vec<uuid::Uuid> = keyed.iter().map(|k| k.1).collect();
        let rids: Vec<uuid::Uuid> = keyed.iter().map(|k| k.2).collect();
        let (member_convs, member_users): (Vec<ConversationId>, Vec<UserId>) =
            pairs.into_iter().unzip();
        let tx = &tx;
        let ((), stored, members, locked) = futures_util::try_join!(
            tx.begin(),
            async {
                if rids.is_empty() {
                    return Ok(Vec::new());
                }
                messages::find_by_requests(tx, &senders, &rids).await
            },
            async {
                if member_convs.is_empty() {
                    return Ok(Vec::new());
                }
                store::memberships_among(tx, &member_convs, &member_users).await
            },
            store::lock_and_reserve(tx, &convs, &ks, now),
        )?;
        (stored, members, locked)
    };
    // Agents found to be members, per conversation.
    let mut agents: HashMap<ConversationId, Vec<UserId>> = HashMap::new();
    for (c, u) in members {
        agents.entry(c).or_default().push(u);
    }
    let mut active_before: HashMap<ConversationId, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut owners: HashMap<ConversationId, (TenantId, Kind, Option<VisitorId>)> = HashMap::new();
    let mut reserved: Vec<(ConversationId, i64)> = Vec::new();
    for r in locked {
        active_before.insert(r.conversation_id, r.last_activity_at);
        owners.insert(
            r.conversation_id,
            (r.tenant_id, Kind::parse(&r.kind)?, r.visitor_id),
        );
        reserved.extend(r.reserved.map(|last| (r.conversation_id, last)));
    }

    // Retries: a request id seen before (or earlier in this batch) gets the first answer.
    let mut first_in_batch: HashMap<(uuid::Uuid, uuid::Uuid), usize> = HashMap::new();
    // Same key twice in one batch: the later ones take the first one's answer.
    let mut followers: Vec<(usize, usize)> = Vec::new();
    let mut following: HashSet<usize> = HashSet::new();
    // What a retry finds stored is announced again: the first attempt's node may have died
    // between its commit and its announcement.
    let mut found: Vec<(ConversationId, i64)> = Vec::new();
    for (i, sender, rid) in keyed {
        let hash = jobs[i].request.as_ref().map(|(_, h)| h.as_slice());
        if let Some(prev) = stored
            .iter()
            .find(|m| m.sender_id == Some(sender) && m.request_id == Some(rid))
        {
            answers[i] = Some(if prev.request_hash.as_deref() == hash {
                found.push((prev.conversation_id, prev.seq));
                Ok(Sent {
                    id: prev.message_id,
                    seq: prev.seq,
                    created_at: prev.created_at,
                })
            } else {
                Err(reused())
            });
        } else if let Some(&lead) = first_in_batch.get(&(sender, rid)) {
            followers.push((i, lead));
            following.insert(i);
        } else {
            first_in_batch.insert((sender, rid), i);
        }
    }

    // Whether each sender may post: one rule for every kind of participant. A conversation
    // that is missing, or another tenant's, was not locked and admits nobody.
    let tenant = scope.tenant_id();
    for (i, j) in jobs.iter().enumerate() {
        if answers[i].is_some() || following.contains(&i) {
            continue;
        }
        let admitted = owners.get(&j.conv).is_some_and(|&(owner, kind, visitor)| {
            let access = ConversationAccess {
                tenant: owner,
                kind,
                visitor,
                agents: agents.get(&j.conv).map_or(&[], Vec::as_slice),
            };
            admits(tenant, &j.sender, &access)
        });
        if !admitted {
            answers[i] = Some(Err(AppError::NotFound("conversation")));
        }
    }

    // Each conversation's seqs start after its last seq before this batch; a closed one took
    // none.
    let mut next: HashMap<ConversationId, i64> = reserved
        .iter()
        .map(|(c, last)| (*c, last - taken[c] + 1))
        .collect();
    let (mut rows, mut events) = (Vec::new(), Vec::new());
    let mut written: HashMap<ConversationId, i64> = HashMap::new();
    for i in 0..jobs.len() {
        if answers[i].is_some() || following.contains(&i) {
            continue;
        }
        let j = &jobs[i];
        let Some(seq) = next.get_mut(&j.conv) else {
            answers[i] = Some(Err(AppError::FailedPrecondition(
                "the conversation is closed",
            )));
            continue;
        };
        let m = Message {
            id: MessageId::new(),
            conversation_id: j.conv,
            seq: *seq,
            sender: j.sender,
            text: j.text.clone(),
            created_at: now,
            edited_at: None,
            deleted: false,
        };
        *seq += 1;
        *written.entry(j.conv).or_default() += 1;
        let mut row = message_row(tenant, &m);
        if let Some((rid, hash)) = &j.request {
            row.request_id = Some(*rid);
            row.request_hash = Some(hash.clone());
        }
        rows.push(row);
        answers[i] = Some(Ok(Sent {
            id: m.id,
            seq: m.seq,
            created_at: now,
        }));
        events.push(ConversationEvent {
            conversation_id: m.conversation_id,
            seq: m.seq,
            at: now,
            kind: EventKind::MessagePosted(m),
        });
    }
    // Seqs taken for sends that were refused go back; a conversation nothing was written to
    // keeps its activity time.
    let mut back: (Vec<ConversationId>, Vec<i64>, Vec<_>) = Default::default();
    for (c, _) in &reserved {
        let wrote = written.get(c).copied().unwrap_or(0);
        if wrote < taken[c] {
            back.0.push(*c);
            back.1.push(taken[c] - wrote);
            back.2.push(match wrote {
                0 => active_before.get(c).copied().unwrap_or(now),
                _ => now,
            });
        }
    }
    let committed: Vec<SpineEvent> = reserved
        .iter()
        .filter_map(|(c, last)| {
            let wrote = written.get(c).copied().unwrap_or(0);
            let from = last - taken[c] + 1;
            (wrote > 0).then_some(SpineEvent::Conversation {
                c: *c,
                from,
                to: from + wrote - 1,
                posts: true,
                quiet: false,
            })
        })
        .collect();
    spine::announce_again(&tx, &found);
    // A batch's conversations share one shard (its partition), so its entry is written by
    // the messages' insert; any other shard would get an entry of its own.
    let mut entries = spine::Entry::by_shard(&committed);
    let entry = (!entries.is_empty()).then(|| entries.remove(0));
    // The last round trip: seqs given back, the messages with the spine entry, and the
    // COMMIT.
    {
        let tx = &tx;
        futures_util::try_join!(
            async {
                if back.0.is_empty() {
                    return Ok(());
                }
                store::give_back_seqs(tx, &back.0, &back.1, &back.2).await
            },
            async {
                let Some(entry) = &entry else {
                    return Ok(());
                };
                let pos = messages::insert_posted(tx, &rows, entry.shard(), entry.json()?).await?;
                entry.announce(tx, pos);
                Ok(())
            },
            async {
                if entries.is_empty() {
                    return Ok(());
                }
                spine::record_entries(tx, &entries, now).await
            },
            tx.commit_pipelined(),
        )?;
    }
    tx.committed();
    for (f, lead) in followers {
        let same =
            jobs[f].request.as_ref().map(|r| &r.1) == jobs[lead].request.as_ref().map(|r| &r.1);
        answers[f] = Some(match (&answers[lead], same) {
            (Some(Ok(sent)), true) => Ok(sent.clone()),
            (Some(Ok(_)), false) => Err(reused()),
            _ => Err(AppError::Unavailable("retry".into())),
        });
    }
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(unanswered())))
        .collect();
    Ok((answers, events))
}

fn unanswered() -> AppError {
    AppError::Internal("send left unanswered".into())
}

fn reused() -> AppError {
    AppError::AlreadyExists("request_id was already used for a different message")
}
