//! What is said in a conversation: sends through the one pipeline, paging through messages,
//! edits and deletes, read positions and typing.

use super::*;

fn request_hash(conv: ConversationId, text: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(conv.as_uuid().as_bytes());
    h.update(text.as_bytes());
    h.finalize().to_vec()
}

/// Sends a message through the one send pipeline (the group-committing writer), in two steps
/// so one client can have many sends in flight and keep their order: awaiting `submit`
/// queues the send (sends queued one after the other take seqs in that order); the future it
/// returns answers once the send is committed. With a `request_id`, a retry returns the
/// first answer and the same id with other content is refused.
pub async fn submit(
    e: &Arc<Engine>,
    scope: &TenantScope,
    conv: ConversationId,
    text: String,
    request_id: Option<uuid::Uuid>,
) -> AppResult<impl Future<Output = AppResult<Sent>> + Send + 'static> {
    let job = SendJob {
        scope: *scope,
        conv,
        sender: Participant::of(scope)?,
        request: request_id.map(|r| (r, request_hash(conv, &text))),
        text: text.clone(),
    };
    let queued = e.writer.enqueue(job).await;
    Ok(async move {
        match queued {
            Some(q) => q.answer().await,
            None => Err(AppError::Unavailable("the writer stopped".into())),
        }
    })
}

/// Posts the engine's own message (a workflow's welcome, queue or max-wait text) into a chat
/// of `scope`'s tenant, in [`submit`]'s two steps: awaiting this queues it, the future it
/// returns answers after its commit. The engine has no sender id to key a retry by, so
/// callers guard against posting twice themselves.
pub(crate) async fn submit_as_engine(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    text: String,
) -> impl Future<Output = AppResult<Sent>> + Send + 'static {
    let job = SendJob {
        scope: *scope,
        conv,
        sender: Participant::System,
        request: None,
        text,
    };
    let queued = e.writer.enqueue(job).await;
    async move {
        match queued {
            Some(q) => q.answer().await,
            None => Err(AppError::Unavailable("the writer stopped".into())),
        }
    }
}

/// Pages through messages by seq.
pub async fn list_messages(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    forward: bool,
    anchor: u64,
    requested_size: i32,
    token: &str,
) -> AppResult<Page<Message>> {
    let who = Participant::of(scope)?;
    let size = page_size(requested_size)?;
    let binding = format!("tenant:{}|ListMessages|{conv}|{forward}", scope.tenant_id());
    let anchor = match e.pages.open::<i64>(&binding, token)? {
        Some(seq) => Some(seq),
        None if anchor == 0 => None,
        None => {
            Some(i64::try_from(anchor).map_err(|_| AppError::field("anchor_seq", "too large"))?)
        }
    };
    let mut tx = e.db.tenant_tx(scope).await?;
    require_admitted(&mut tx, conv, who).await?;
    let rows = messages::page(&mut tx, conv, forward, anchor, size + 1).await?;
    tx.commit().await?;
    let (rows, more) = split_page(rows, size);
    let next_page_token = match rows.last() {
        Some(last) if more => e.pages.seal(&binding, &last.seq),
        _ => String::new(),
    };
    Ok(Page {
        items: rows.into_iter().map(message).collect::<AppResult<_>>()?,
        next_page_token,
    })
}

/// Edits (`Some(text)`) or deletes (`None`) one of the caller's own messages.
pub async fn change_message(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    id: MessageId,
    text: Option<String>,
) -> AppResult<(Message, i64)> {
    let me = Participant::of(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    require_admitted(&mut tx, conv, me).await?;
    let row = messages::get(&mut tx, conv, id)
        .await?
        .ok_or(AppError::NotFound("message"))?;
    if Participant::from_stored(&row.sender_type, row.sender_id)? != me {
        return Err(AppError::PermissionDenied(
            "only the author changes a message",
        ));
    }
    if row.deleted_at.is_some() {
        return Err(AppError::FailedPrecondition("the message is deleted"));
    }
    let now = e.now();
    let (updated, kind): (Message, fn(Message) -> EventKind) = match text {
        Some(t) => (
            message(messages::edit(&mut tx, id, &t, now).await?)?,
            EventKind::MessageEdited,
        ),
        None => (
            message(messages::delete(&mut tx, id, now).await?)?,
            EventKind::MessageDeleted,
        ),
    };
    let ev = append(&mut tx, conv, kind(updated.clone()), me, now).await?;
    let seq = ev.seq;
    commit_events(e, scope, tx, vec![ev]).await?;
    Ok((updated, seq))
}

/// Moves the caller's read position; returns it and the unread count left.
pub async fn mark_read(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    seq: u64,
) -> AppResult<(i64, i64)> {
    let (me, _) = require_agent(scope)?;
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let mut tx = e.db.tenant_tx(scope).await?;
    let read_seq = store::mark_read(&mut tx, conv, me, seq)
        .await?
        .ok_or(AppError::NotFound("conversation"))?;
    let unread = store::unread_counts(&mut tx, me, &[conv])
        .await?
        .first()
        .map_or(0, |(_, n)| *n);
    tx.commit().await?;
    e.publisher.publish(Event::Read {
        tenant: scope.tenant_id(),
        conversation: conv,
        reader: Participant::Agent(me),
        read_seq,
    });
    Ok((read_seq, unread))
}

/// Announces that the caller is (or stopped) typing.
pub async fn set_typing(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    typing: bool,
) -> AppResult<()> {
    let me = Participant::of(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    require_admitted(&mut tx, conv, me).await?;
    tx.commit().await?;
    e.publisher.publish(Event::Typing {
        tenant: scope.tenant_id(),
        conversation: conv,
        sender: me,
        typing,
    });
    Ok(())
}
