//! External chat, the visitor side: who a widget's visitor is (created or resumed by session
//! id, or found again by a verified external user id), their chats and where each stands in
//! the queue, how a chat ends and is rated, and the tenant's identity-verification setting.
//!
//! A chat is an external conversation whose visitor is its owner. Starting one routes it by
//! the tenant's workflows and queues it (status `queued` and a `queue_entries` row carrying
//! the applied actions, [`queue_entry`]); who then serves it is `assignment`'s business (the
//! dispatcher, accept, transfer), and its max-wait timer is `dispatcher`'s. Messages, paging, typing and streams go through the same code as agents'
//! (`conversations`, the writer, `realtime::stream`), which admits a visitor into their own
//! chats only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Engine;
use super::conversations::{self, Conversation, Status, conversation, require_admitted};
use super::events::Message;
use super::participants::Participant;
use super::spine::{self, SpineEvent};
use super::workflows::{Selection, VisitorContext};
use crate::auth::jwt::{Claims, VISITOR_AUDIENCE};
use crate::error::{AppError, AppResult, FieldViolation};
use crate::ids::{ApiKeyId, ConversationId, TenantId, UserId, VisitorId};
use crate::storage::conversations as conv_store;
use crate::storage::visitors::{
    self as store, IdentityRow, NewQueueEntry, VisitorFields, VisitorRow,
};
use crate::storage::{TenantTx, tenants as tenant_store};
use crate::tenancy::{Actor, OperatorScope, TenantScope};

/// How long a visitor token lives; the widget calls InitVisitor again for a new one.
pub const TOKEN_TTL: chrono::Duration = chrono::Duration::hours(24);
/// Most custom attributes a visitor carries.
pub const MAX_ATTRIBUTES: usize = 50;
/// Longest attribute name, in characters.
pub const MAX_ATTRIBUTE_NAME: usize = 64;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE: usize = 500;
/// Longest page URL or referrer.
pub const MAX_URL: usize = 2048;
/// Longest rating comment, in characters.
pub const MAX_COMMENT: usize = 2000;
/// Chats returned by InitVisitor.
const RECENT_CHATS: i64 = 20;

pub use super::workflows::model::VisitorType;

/// A visitor's claim to be the tenant's user `external_user_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The tenant's id for the user.
    pub external_user_id: String,
    /// Hex HMAC-SHA256 of the id under the tenant's secret.
    pub proof: String,
}

/// What the widget reports in InitVisitor, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisitorInput {
    /// The browser's session id.
    pub session_id: String,
    /// Name.
    pub name: String,
    /// Email (lower case) or empty.
    pub email: String,
    /// Page URL or empty.
    pub page_url: String,
    /// Referrer or empty.
    pub referrer: String,
    /// BCP 47 language or empty.
    pub language: String,
    /// ISO 3166-1 alpha-2 country (upper case) or empty.
    pub country: String,
    /// The site says the visitor has been there before.
    pub returning: bool,
    /// Custom attributes.
    pub attributes: BTreeMap<String, String>,
    /// Identity claim.
    pub identity: Option<Identity>,
}

/// A visitor as the API shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visitor {
    /// Id.
    pub id: VisitorId,
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Kind.
    pub visitor_type: VisitorType,
    /// Country.
    pub country: String,
    /// Language.
    pub language: String,
    /// Page URL.
    pub page_url: String,
    /// Referrer.
    pub referrer: String,
    /// Custom attributes.
    pub attributes: BTreeMap<String, String>,
    /// Verified external user id.
    pub external_user_id: Option<String>,
    /// First seen.
    pub created_at: DateTime<Utc>,
    /// Last InitVisitor.
    pub last_seen_at: DateTime<Utc>,
}

/// A stored visitor as the API shows them.
pub(crate) fn visitor(row: VisitorRow) -> AppResult<Visitor> {
    let attributes = serde_json::from_value(row.attributes)
        .map_err(|e| AppError::Internal(format!("stored visitor attributes: {e}")))?;
    Ok(Visitor {
        id: row.visitor_id,
        name: row.name,
        email: row.email,
        visitor_type: VisitorType::parse(&row.visitor_type).ok_or_else(|| {
            AppError::Internal(format!("stored visitor type {:?}", row.visitor_type))
        })?,
        country: row.country,
        language: row.language,
        page_url: row.page_url,
        referrer: row.referrer,
        attributes,
        external_user_id: row.external_user_id,
        created_at: row.created_at,
        last_seen_at: row.last_seen_at,
    })
}

/// The answer to InitVisitor.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// The visitor.
    pub visitor: Visitor,
    /// Their token.
    pub token: String,
    /// When it expires.
    pub token_expires_at: DateTime<Utc>,
    /// Their chats, newest first.
    pub chats: Vec<Conversation>,
}

/// Where a chat stands for its visitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    /// The chat.
    pub conversation_id: ConversationId,
    /// Its status.
    pub status: Status,
    /// 1-based place in the queue while waiting.
    pub position: Option<u32>,
    /// Estimated wait in seconds while waiting; 0 when unknown.
    pub estimated_wait_seconds: u32,
    /// Chats waiting in the tenant's queue.
    pub queue_length: u32,
    /// Since when it waits.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// The agent serving it.
    pub assigned: Option<UserId>,
    /// Their display name.
    pub assigned_name: Option<String>,
}

/// The answer to StartChat.
#[derive(Clone, Debug)]
pub struct Started {
    /// The chat.
    pub chat: Conversation,
    /// Whether it is the visitor's chat that had not ended, not a new one.
    pub resumed: bool,
    /// The initial message, when one was sent.
    pub initial: Option<Message>,
    /// Where it stands.
    pub status: QueueStatus,
}

/// A stored rating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rating {
    /// The chat.
    pub conversation_id: ConversationId,
    /// 1-5.
    pub score: u8,
    /// Comment.
    pub comment: String,
    /// The agent who served it.
    pub agent: Option<UserId>,
    /// When given.
    pub created_at: DateTime<Utc>,
}

/// The tenant's identity-verification setting after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentitySetting {
    /// The new secret, shown this once, when it was rotated.
    pub new_secret: Option<String>,
    /// Whether identities are required.
    pub required: bool,
    /// Whether there is a secret.
    pub has_secret: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

// ---- validation (pure; the grpc layer calls these with the wire's field names) ----

fn violation(field: &str, description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, description)
}

/// A widget session id: 16-128 characters of `[A-Za-z0-9_-]`, so that it is unguessable
/// enough to stand for the visitor and cheap to index.
pub fn session_id(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok = (16..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(violation(
            field,
            "must be 16-128 characters of A-Z, a-z, 0-9, '-' and '_'",
        ))
    }
}

/// An http(s) URL of at most [`MAX_URL`] bytes; empty allowed.
pub fn page_url(field: &str, value: &str) -> Result<String, FieldViolation> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let ok = value.len() <= MAX_URL
        && url::Url::parse(value).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
    if ok {
        Ok(value.to_owned())
    } else {
        Err(violation(
            field,
            format!("must be an http(s) URL of at most {MAX_URL} characters"),
        ))
    }
}

/// A BCP 47 language tag (letters, digits and '-', at most 35); empty allowed.
pub fn language(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok = value.is_empty()
        || (value.len() <= 35
            && value.starts_with(|c: char| c.is_ascii_alphabetic())
            && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(violation(field, "must be a BCP 47 language tag"))
    }
}

/// An ISO 3166-1 alpha-2 country code, returned upper case; empty allowed.
pub fn country(field: &str, value: &str) -> Result<String, FieldViolation> {
    let ok =
        value.is_empty() || (value.len() == 2 && value.chars().all(|c| c.is_ascii_alphabetic()));
    if ok {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(violation(
            field,
            "must be a two-letter ISO 3166-1 country code",
        ))
    }
}

/// Custom attributes within their bounds; every bad entry is reported.
pub fn attributes(
    field: &str,
    raw: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Vec<FieldViolation>> {
    if raw.len() > MAX_ATTRIBUTES {
        return Err(vec![violation(
            field,
            format!("at most {MAX_ATTRIBUTES} attributes"),
        )]);
    }
    let mut bad = Vec::new();
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        let name_ok = !k.is_empty()
            && k.chars().count() <= MAX_ATTRIBUTE_NAME
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        // The name is checked before it is echoed into a field path.
        let path = if name_ok {
            format!("{field}[{k}]")
        } else {
            field.to_owned()
        };
        if !name_ok {
            bad.push(violation(
                &path,
                format!(
                    "names are 1-{MAX_ATTRIBUTE_NAME} characters of A-Z, a-z, 0-9, '_', '-' and '.'"
                ),
            ));
            continue;
        }
        if v.chars().count() > MAX_ATTRIBUTE_VALUE || v.chars().any(char::is_control) {
            bad.push(violation(
                &path,
                format!(
                    "values are at most {MAX_ATTRIBUTE_VALUE} characters, no control characters"
                ),
            ));
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    if bad.is_empty() { Ok(out) } else { Err(bad) }
}

/// An identity claim: an external user id of 1-256 characters and a 64-digit hex proof.
pub fn identity(
    field: &str,
    external_user_id: &str,
    proof: &str,
) -> Result<Identity, FieldViolation> {
    let n = external_user_id.chars().count();
    if !(1..=256).contains(&n) || external_user_id.chars().any(char::is_control) {
        return Err(violation(
            &format!("{field}.external_user_id"),
            "must be 1-256 characters without control characters",
        ));
    }
    if proof.len() != 64 || !proof.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(violation(
            &format!("{field}.proof"),
            "must be the 64 hex digits of an HMAC-SHA256",
        ));
    }
    Ok(Identity {
        external_user_id: external_user_id.to_owned(),
        proof: proof.to_owned(),
    })
}

/// A rating score, 1-5.
pub fn score(field: &str, value: u32) -> Result<u8, FieldViolation> {
    match u8::try_from(value) {
        Ok(s @ 1..=5) => Ok(s),
        _ => Err(violation(field, "must be 1 to 5")),
    }
}

// ---- identity verification (pure) ----

/// Hex HMAC-SHA256 of `message` under `secret`, as the tenant's server computes it.
pub fn identity_proof(secret: &[u8], message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key size");
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The external user id a visitor proved, None when they claimed none; a claim that cannot
/// be verified, a wrong proof, or a missing one the tenant requires, is refused. The proof is
/// compared in constant time.
pub fn verify_identity(
    setting: Option<&IdentityRow>,
    claim: Option<&Identity>,
) -> AppResult<Option<String>> {
    let secret = setting.and_then(|s| s.secret.as_deref());
    let required = setting.is_some_and(|s| s.required);
    match (claim, secret) {
        (None, _) if required => Err(AppError::Unauthenticated(
            "this site requires a verified visitor identity",
        )),
        (None, _) => Ok(None),
        (Some(_), None) => Err(AppError::FailedPrecondition(
            "identity verification is not set up for this tenant",
        )),
        (Some(c), Some(secret)) => {
            let expected = identity_proof(secret, &c.external_user_id);
            let given = c.proof.to_ascii_lowercase();
            if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
                Ok(Some(c.external_user_id.clone()))
            } else {
                Err(AppError::Unauthenticated(
                    "the identity proof does not match",
                ))
            }
        }
    }
}

/// The visitor type of a visitor after this InitVisitor.
pub fn visitor_type(identified: bool, seen_before: bool, site_says_returning: bool) -> VisitorType {
    if identified {
        VisitorType::Identified
    } else if seen_before || site_says_returning {
        VisitorType::Returning
    } else {
        VisitorType::New
    }
}

// ---- the queue (pure) ----

/// A chat waiting in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// The chat.
    pub conversation: ConversationId,
    /// Higher is served first.
    pub priority: i32,
    /// When it started waiting.
    pub enqueued_at: DateTime<Utc>,
}

/// Whether `a` is served before `b`: higher priority first, then longer waiting, then (for
/// the same instant) the older chat id, so that the order is total.
pub fn served_before(a: &QueueEntry, b: &QueueEntry) -> bool {
    (std::cmp::Reverse(a.priority), a.enqueued_at, a.conversation)
        < (std::cmp::Reverse(b.priority), b.enqueued_at, b.conversation)
}

/// Where chats that joined the queue together stand: `joined` entered at one instant, and
/// `counts` is the queue counted by priority right after (their own entries included, none
/// of them waiting from before that instant). Gives each joined chat its 1-based position
/// and the queue's length, in the order of [`served_before`]; entries of another node made
/// at the very same instant are not placed among them.
pub fn places_on_joining(
    counts: &[store::PriorityCount],
    joined: &[QueueEntry],
) -> Vec<(ConversationId, u32, u32)> {
    let length: i64 = counts.iter().map(|c| c.total).sum();
    joined
        .iter()
        .map(|e| {
            let earlier: i64 = counts
                .iter()
                .map(|c| match c.priority.cmp(&e.priority) {
                    std::cmp::Ordering::Greater => c.total,
                    std::cmp::Ordering::Equal => c.before,
                    std::cmp::Ordering::Less => 0,
                })
                .sum();
            let alongside = joined
                .iter()
                .filter(|o| o.priority == e.priority && served_before(o, e))
                .count() as i64;
            let position = u32::try_from(earlier + alongside + 1).unwrap_or(u32::MAX);
            (
                e.conversation,
                position,
                u32::try_from(length).unwrap_or(u32::MAX),
            )
        })
        .collect()
}

// ---- routing (pure) ----

/// What routing knows of a visitor.
pub fn routing_context(v: &Visitor) -> VisitorContext {
    VisitorContext {
        country: (!v.country.is_empty()).then(|| v.country.clone()),
        page_url: v.page_url.clone(),
        visitor_type: v.visitor_type,
        attributes: v.attributes.clone(),
    }
}

/// The queue entry of `visitor`'s chat routed by `selection` at `now`: its priority, its
/// workflow's actions (kept with the entry, so a workflow edited later does not change a
/// waiting chat) and when its max wait passes.
pub fn queue_entry(
    conv: ConversationId,
    visitor: VisitorId,
    selection: &Selection,
    now: DateTime<Utc>,
) -> AppResult<NewQueueEntry> {
    let a = &selection.actions;
    Ok(NewQueueEntry {
        conversation_id: conv,
        visitor_id: visitor,
        workflow_id: selection.applied.workflow_id(),
        priority: a.priority,
        actions: serde_json::to_value(a).map_err(|e| AppError::Internal(e.to_string()))?,
        enqueued_at: now,
        max_wait_at: a
            .max_wait_seconds
            .map(|s| now + chrono::Duration::seconds(i64::from(s))),
        excluded: Vec::new(),
    })
}

/// The moments after `now` at which a waiting chat's needs change by themselves (a skill
/// relaxed), so the dispatcher must look again.
pub fn relax_times(selection: &Selection, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut at: Vec<DateTime<Utc>> = selection
        .actions
        .required_skills
        .iter()
        .filter_map(|n| n.relax_after_seconds)
        .map(|s| now + chrono::Duration::seconds(i64::from(s)))
        .collect();
    at.sort();
    at.dedup();
    at
}

// ---- operations ----

/// The visitor a scope acts as; PERMISSION_DENIED without a visitor token.
fn require_visitor(scope: &TenantScope) -> AppResult<VisitorId> {
    match scope.actor() {
        Actor::Visitor {
            visitor_id: Some(v),
        } => Ok(v),
        Actor::Visitor { visitor_id: None } => {
            Err(AppError::PermissionDenied("a visitor token is required"))
        }
        _ => Err(AppError::PermissionDenied("only visitors may do this")),
    }
}

/// Whether the scope is a widget caller (with or without a visitor token).
fn require_widget(scope: &TenantScope) -> AppResult<()> {
    match scope.actor() {
        Actor::Visitor { .. } => Ok(()),
        _ => Err(AppError::PermissionDenied("a widget api key is required")),
    }
}

/// Creates or resumes the visitor of a widget session and issues their token. With a
/// verified identity, the visitor with that external user id is found again from any
/// session (an anonymous visitor of this session becomes them if none exists yet). Without
/// one, a session that last belonged to an identified visitor gets a new anonymous visitor:
/// an identified visitor's chats are only ever reached with a valid proof (a shared computer
/// after the site's logout shows nothing of theirs).
pub async fn init(
    e: &Engine,
    scope: &TenantScope,
    api_key: ApiKeyId,
    input: VisitorInput,
) -> AppResult<Initialized> {
    require_widget(scope)?;
    let now = e.now();
    let (row, chats) = match input.identity {
        // Most arrivals claim no identity: they are group-committed.
        None => {
            let a = e.arrivals.arrive(*scope, input).await?;
            (a.row, a.chats)
        }
        Some(_) => init_claimed(e, scope, input, now).await?,
    };
    let token_expires_at = now + TOKEN_TTL;
    let token = e.jwt.sign(&Claims {
        iss: e.jwt.issuer().to_owned(),
        aud: VISITOR_AUDIENCE.to_owned(),
        sub: row.visitor_id.to_string(),
        tid: scope.tenant_id().to_string(),
        ctx: api_key.to_string(),
        sid: None,
        iat: now.timestamp(),
        exp: token_expires_at.timestamp(),
    })?;
    Ok(Initialized {
        visitor: visitor(row)?,
        token,
        token_expires_at,
        chats,
    })
}

/// A visitor already known, as InitVisitor's decision needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// Their id.
    pub id: VisitorId,
    /// Whether they are verified as one of the tenant's users.
    pub identified: bool,
}

impl From<&VisitorRow> for Known {
    fn from(v: &VisitorRow) -> Self {
        Self {
            id: v.visitor_id,
            identified: v.external_user_id.is_some(),
        }
    }
}

/// What one InitVisitor writes.
#[derive(Debug)]
pub struct Arrival {
    /// The widget session, tied to the visitor.
    pub session_id: String,
    /// The visitor it resumes; None: a new one.
    pub existing: Option<VisitorId>,
    /// The visitor's id (new or resumed).
    pub id: VisitorId,
    /// What is written of them.
    pub fields: VisitorFields,
    /// The external user id they proved now.
    pub external: Option<String>,
}

/// What an InitVisitor writes, given the tenant's identity setting, the visitor its session
/// belongs to and the one its claimed identity names (each if any), at `now`. A verified
/// identity finds its visitor again (or the session's anonymous visitor becomes it); a
/// session of an identified visitor does not resume them without the proof.
pub fn arrival(
    setting: Option<&IdentityRow>,
    input: VisitorInput,
    by_session: Option<Known>,
    by_claimed: Option<Known>,
    now: DateTime<Utc>,
) -> AppResult<Arrival> {
    let external = verify_identity(setting, input.identity.as_ref())?;
    let anonymous = by_session.filter(|v| !v.identified);
    let existing = match &external {
        // The anonymous visitor of this device logged in on the site: they become the
        // identified visitor, chats and all.
        Some(_) => by_claimed.or(anonymous),
        None => anonymous,
    };
    let identified = external.is_some() || existing.is_some_and(|v| v.identified);
    let fields = VisitorFields {
        name: input.name,
        email: input.email,
        country: input.country,
        language: input.language,
        visitor_type: visitor_type(identified, existing.is_some(), input.returning)
            .as_str()
            .to_owned(),
        attributes: serde_json::to_value(&input.attributes)
            .map_err(|err| AppError::Internal(err.to_string()))?,
        last_seen_at: now,
        page_url: input.page_url,
        referrer: input.referrer,
    };
    let existing = existing.map(|v| v.id);
    Ok(Arrival {
        session_id: input.session_id,
        existing,
        id: existing.unwrap_or_else(VisitorId::new),
        fields,
        external,
    })
}

/// InitVisitor with an identity claim, in a transaction of its own.
async fn init_claimed(
    e: &Engine,
    scope: &TenantScope,
    input: VisitorInput,
    now: DateTime<Utc>,
) -> AppResult<(VisitorRow, Vec<Conversation>)> {
    // Everything read before deciding goes in one round trip, under the locks taken first in
    // it (in the order a pipeline keeps). The claimed external id is locked and looked up
    // before its proof is checked: nothing read is used unless the proof holds.
    let claimed = input.identity.as_ref().map(|c| c.external_user_id.as_str());
    let mut tx = e.db.tenant_tx_pipelined(scope).await?;
    let (setting, by_session, by_claimed) = {
        let tx = &tx;
        let session = input.session_id.as_str();
        let ((), setting, (), (), by_session, by_claimed) = futures_util::try_join!(
            tx.begin(),
            store::identity(tx),
            store::lock_identity_key(tx, "session", session),
            async {
                match claimed {
                    Some(ext) => store::lock_identity_key(tx, "external", ext).await,
                    None => Ok(()),
                }
            },
            store::by_session(tx, session),
            async {
                match claimed {
                    Some(ext) => store::by_external_user(tx, ext).await,
                    None => Ok(None),
                }
            },
        )?;
        (setting, by_session, by_claimed)
    };
    let a = arrival(
        setting.as_ref(),
        input,
        by_session.as_ref().map(Known::from),
        by_claimed.as_ref().map(Known::from),
        now,
    )?;
    let written = async {
        match a.existing {
            Some(_) => store::update(&tx, a.id, &a.fields, a.external.as_deref()).await,
            None => store::insert(&tx, a.id, &a.fields, a.external.as_deref(), now).await,
        }
    };
    let session = store::add_session(&tx, &a.session_id, a.id, now);
    Ok(match a.existing {
        // A visitor made just now has no chats to look up: the writes and the COMMIT share
        // one round trip.
        None => {
            let (row, (), ()) = futures_util::try_join!(written, session, tx.commit_pipelined())?;
            tx.committed();
            (row, Vec::new())
        }
        Some(v) => {
            let (row, ()) = futures_util::try_join!(written, session)?;
            let chats = recent_chats(&mut tx, v).await?;
            tx.commit().await?;
            (row, chats)
        }
    })
}

/// The visitor's most recent chats, with their members.
pub(crate) async fn recent_chats(tx: &mut TenantTx, v: VisitorId) -> AppResult<Vec<Conversation>> {
    let rows = store::chats(tx, v, RECENT_CHATS).await?;
    let ids: Vec<ConversationId> = rows.iter().map(|r| r.conversation_id).collect();
    let members = conv_store::members_of(tx, &ids).await?;
    rows.into_iter()
        .map(|r| {
            let m = members
                .iter()
                .filter(|(c, _)| *c == r.conversation_id)
                .map(|(_, u)| *u)
                .collect();
            conversation(r, m)
        })
        .collect()
}

async fn status_of(tx: &mut TenantTx, row: &conv_store::ConversationRow) -> AppResult<QueueStatus> {
    let status = Status::parse(&row.status)?;
    // Counted in the database (the same order as `served_before`): a long queue is not read
    // row by row for every chat start.
    let s = store::standing(tx, row.conversation_id, row.assigned_agent_id).await?;
    let position = s
        .enqueued_at
        .map(|_| u32::try_from(s.ahead).unwrap_or(u32::MAX - 1) + 1);
    Ok(QueueStatus {
        conversation_id: row.conversation_id,
        status,
        position,
        estimated_wait_seconds: 0,
        queue_length: u32::try_from(s.length).unwrap_or(u32::MAX),
        enqueued_at: s.enqueued_at,
        assigned: row.assigned_agent_id,
        assigned_name: s.assigned_name,
    })
}

/// Starts a chat for the calling visitor, routed by the tenant's workflows: it waits in the
/// queue with the applied workflow's priority and needs until the dispatcher (or an agent)
/// takes it; its max wait and skill relaxations are durable timers. The visitor's chat that
/// has not ended is returned instead when there is one. The workflow's welcome message, the
/// initial message and the queue message follow, in that order, through the one send
/// pipeline once the chat exists.
pub async fn start_chat(
    e: &std::sync::Arc<Engine>,
    scope: &TenantScope,
    initial: Option<(String, Option<uuid::Uuid>)>,
) -> AppResult<Started> {
    let me = require_visitor(scope)?;
    // Group-committed with other starts; locks the visitor, so that two concurrent starts
    // of theirs make one chat.
    let super::starter::Begun {
        row,
        members,
        resumed,
        said,
        status: placed,
    } = e.starter.begin(*scope, me).await?;
    let id = row.conversation_id;
    let (welcome, queued) = said.unwrap_or_default();
    // Queued one after the other, they take seqs in this order and share one group commit.
    let welcome = match welcome.is_empty() {
        true => None,
        false => Some(conversations::submit_as_engine(e, scope, id, welcome).await),
    };
    let initial = match initial {
        Some((text, rid)) => {
            let sent = conversations::submit(e, scope, id, text.clone(), rid).await?;
            Some((text, sent))
        }
        None => None,
    };
    let queued = match queued.is_empty() {
        true => None,
        false => Some(conversations::submit_as_engine(e, scope, id, queued).await),
    };
    // The newest message this start wrote: the chat as answered runs up to it.
    let mut newest: Option<(i64, DateTime<Utc>)> = None;
    let mut wrote = |sent: &conversations::Sent| {
        if newest.is_none_or(|(seq, _)| seq < sent.seq) {
            newest = Some((sent.seq, sent.created_at));
        }
    };
    if let Some(w) = welcome {
        wrote(&w.await?);
    }
    let initial = match initial {
        Some((text, sent)) => {
            let sent = sent.await?;
            wrote(&sent);
            Some(Message {
                id: sent.id,
                conversation_id: id,
                seq: sent.seq,
                sender: Participant::Visitor(me),
                text,
                created_at: sent.created_at,
                edited_at: None,
                deleted: false,
            })
        }
        None => None,
    };
    if let Some(q) = queued {
        wrote(&q.await?);
    }
    let (row, status) = match placed {
        // A new chat is answered as its start left it: what happened since (an assignment,
        // a new place) comes on the visitor's stream from the chat's `last_seq` on.
        Some(status) => {
            let mut row = row;
            if let Some((seq, at)) = newest {
                row.last_seq = row.last_seq.max(seq);
                row.last_activity_at = row.last_activity_at.max(at);
            }
            (row, status)
        }
        None => {
            // A plain read: the dispatcher may hold the chat's row while it assigns it.
            let mut tx = e.db.tenant_tx(scope).await?;
            let row = store::chat(&mut tx, id)
                .await?
                .ok_or(AppError::NotFound("conversation"))?;
            let status = status_of(&mut tx, &row).await?;
            tx.commit().await?;
            (row, status)
        }
    };
    // No estimate here: it reads the tenant's whole queue, too much for every chat start;
    // the visitor's stream carries it right after it catches up, and GetQueueStatus.
    Ok(Started {
        chat: conversation(row, members)?,
        resumed,
        initial,
        status,
    })
}

/// Timer kind: a waiting chat's max wait has passed.
pub const MAX_WAIT: &str = "chat.max_wait";
/// Timer kind: a waiting chat's required skill is relaxed now.
pub const RELAX: &str = "chat.relax";

/// The payload of a chat's waiting timers.
pub fn wait_payload(conv: ConversationId) -> serde_json::Value {
    serde_json::json!({ "conversation_id": conv.to_string() })
}

/// The chat a waiting timer is about.
pub fn wait_conversation(payload: &serde_json::Value) -> AppResult<ConversationId> {
    payload
        .get("conversation_id")
        .and_then(|v| v.as_str())
        .and_then(ConversationId::parse)
        .ok_or_else(|| AppError::Internal(format!("waiting timer payload {payload}")))
}

/// Where one of the caller's chats stands.
pub async fn queue_status(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
) -> AppResult<QueueStatus> {
    let who = Participant::of(scope)?;
    let mut tx = e.db.tenant_tx(scope).await?;
    let (row, _) = require_admitted(&mut tx, conv, who).await?;
    let status = status_of(&mut tx, &row).await?;
    tx.commit().await?;
    with_estimate(e, scope, status).await
}

/// Fills in the estimated wait of a waiting chat's status.
async fn with_estimate(
    e: &Engine,
    scope: &TenantScope,
    mut s: QueueStatus,
) -> AppResult<QueueStatus> {
    if s.position.is_some()
        && let Some(p) = super::queue_view::place_of(e, scope, s.conversation_id).await?
    {
        s.estimated_wait_seconds = p.estimated_wait_seconds;
    }
    Ok(s)
}

/// Ends a chat the caller takes part in (its visitor, or an agent serving it): it leaves the
/// queue, closes, and every member sees a `status_changed` event. The assignee is kept, so a
/// rating goes to the agent who served the chat. Ending an ended chat returns it unchanged.
pub async fn end_chat(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
) -> AppResult<Conversation> {
    let who = Participant::of(scope)?;
    let job = super::closer::CloseJob {
        scope: *scope,
        conv,
        who,
    };
    e.closer.close(job).await
}

/// Rates one of the calling visitor's ended chats, once; the rating is kept with the agent
/// who served it.
pub async fn submit_rating(
    e: &Engine,
    scope: &TenantScope,
    conv: ConversationId,
    score: u8,
    comment: String,
) -> AppResult<Rating> {
    let me = require_visitor(scope)?;
    let now = e.now();
    let mut tx = e.db.tenant_tx(scope).await?;
    let (row, _) = require_admitted(&mut tx, conv, Participant::Visitor(me)).await?;
    if Status::parse(&row.status)? != Status::Closed {
        return Err(AppError::FailedPrecondition(
            "a chat is rated once it has ended",
        ));
    }
    let stored = store::insert_rating(
        &mut tx,
        conv,
        i16::from(score),
        &comment,
        row.assigned_agent_id,
        now,
    )
    .await?
    .ok_or(AppError::FailedPrecondition("this chat was rated already"))?;
    spine::record(&tx, &[SpineEvent::Rated { c: conv }], now).await?;
    tx.commit().await?;
    Ok(Rating {
        conversation_id: stored.conversation_id,
        score: u8::try_from(stored.score).unwrap_or(0),
        comment: stored.comment,
        agent: stored.agent_id,
        created_at: stored.created_at,
    })
}

/// Sets whether the tenant's visitors must prove their identity and, with `rotate`, makes a
/// new secret (64 hex digits; its characters are the HMAC key). The secret is stored as is,
/// because verifying a proof needs it; it is returned only here.
pub async fn set_identity_verification(
    e: &Engine,
    op: &OperatorScope,
    tenant: TenantId,
    required: bool,
    rotate: bool,
) -> AppResult<IdentitySetting> {
    let mut tx = e.db.tenant_tx(&TenantScope::operator(op, tenant)).await?;
    if tenant_store::own(&mut tx).await?.is_none() {
        return Err(AppError::NotFound("tenant"));
    }
    let new_secret = rotate.then(|| {
        let mut raw = [0u8; 32];
        rand::rng().fill(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    });
    let has_secret = match &new_secret {
        Some(_) => true,
        None => store::identity(&tx)
            .await?
            .is_some_and(|s| s.secret.is_some()),
    };
    if required && !has_secret {
        return Err(AppError::FailedPrecondition(
            "create a secret (rotate_secret) before requiring identities",
        ));
    }
    let row = store::set_identity(
        &mut tx,
        new_secret.as_deref().map(str::as_bytes),
        required,
        e.now(),
    )
    .await?;
    tx.commit().await?;
    Ok(IdentitySetting {
        new_secret,
        required: row.required,
        has_secret: row.secret.is_some(),
        updated_at: row.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn setting(secret: Option<&str>, required: bool) -> IdentityRow {
        IdentityRow {
            secret: secret.map(|s| s.as_bytes().to_vec()),
            required,
            updated_at: Utc::now(),
        }
    }

    fn claim(id: &str, proof: String) -> Identity {
        Identity {
            external_user_id: id.into(),
            proof,
        }
    }

    #[test]
    fn a_right_proof_identifies_and_a_wrong_or_missing_one_is_refused() {
        let s = setting(Some("tenant-secret"), false);
        let right = identity_proof(b"tenant-secret", "user-42");
        assert_eq!(
            verify_identity(Some(&s), Some(&claim("user-42", right.clone()))).unwrap(),
            Some("user-42".into())
        );
        // Hex case does not matter.
        assert!(verify_identity(Some(&s), Some(&claim("user-42", right.to_uppercase()))).is_ok());
        // Another user's proof, or one under another secret.
        let theirs = identity_proof(b"tenant-secret", "user-43");
        let forged = identity_proof(b"guessed", "user-42");
        for proof in [theirs, forged] {
            assert!(matches!(
                verify_identity(Some(&s), Some(&claim("user-42", proof))),
                Err(AppError::Unauthenticated(_))
            ));
        }
        // No claim: anonymous unless required.
        assert_eq!(verify_identity(Some(&s), None).unwrap(), None);
        assert_eq!(verify_identity(None, None).unwrap(), None);
        let strict = setting(Some("tenant-secret"), true);
        assert!(matches!(
            verify_identity(Some(&strict), None),
            Err(AppError::Unauthenticated(_))
        ));
        // A claim nobody can verify is refused, not ignored.
        assert!(matches!(
            verify_identity(None, Some(&claim("user-42", right))),
            Err(AppError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn the_proof_is_the_standard_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            identity_proof(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn entry(priority: i32, secs: i64) -> QueueEntry {
        QueueEntry {
            conversation: ConversationId::new(),
            priority,
            enqueued_at: Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap(),
        }
    }

    #[test]
    fn positions_follow_priority_then_waiting_time() {
        let old_low = entry(0, 0);
        let new_low = entry(0, 10);
        let new_high = entry(5, 20);
        let newer_high = entry(5, 30);
        let all = [old_low, new_low, new_high, newer_high];
        let pos = |e: &QueueEntry| all.iter().filter(|o| served_before(o, e)).count() + 1;
        assert_eq!(pos(&new_high), 1);
        assert_eq!(pos(&newer_high), 2);
        assert_eq!(pos(&old_low), 3);
        assert_eq!(pos(&new_low), 4);
        // Nobody is served before themselves.
        assert!(!served_before(&new_low, &new_low));
        // The same instant: the order is still total, so exactly one comes first.
        let (a, b) = (entry(0, 50), entry(0, 50));
        assert!(served_before(&a, &b) != served_before(&b, &a));
    }

    #[test]
    fn chats_joining_together_are_placed_after_everyone_waiting_and_by_priority() {
        let at = Utc.timestamp_opt(1_800_000_100, 0).unwrap();
        let joining = |priority| QueueEntry {
            conversation: ConversationId::new(),
            priority,
            enqueued_at: at,
        };
        let (low_a, low_b, high) = (joining(0), joining(0), joining(5));
        let joined = [low_a, low_b, high];
        // Before them: 2 high chats and 3 low ones waiting, 1 low one queued back at `at`'s
        // instant by another node (not placed among them); then theirs.
        let counts = [
            store::PriorityCount {
                priority: 5,
                before: 2,
                total: 3,
            },
            store::PriorityCount {
                priority: 0,
                before: 3,
                total: 6,
            },
        ];
        let places = places_on_joining(&counts, &joined);
        let at_of = |c: ConversationId| places.iter().find(|p| p.0 == c).unwrap();
        assert_eq!(at_of(high.conversation).1, 3);
        let (first, second) = match served_before(&low_a, &low_b) {
            true => (low_a, low_b),
            false => (low_b, low_a),
        };
        assert_eq!(at_of(first.conversation).1, 7);
        assert_eq!(at_of(second.conversation).1, 8);
        assert!(places.iter().all(|p| p.2 == 9));
    }

    #[test]
    fn the_visitor_type_comes_from_what_the_server_knows() {
        assert_eq!(visitor_type(true, false, false), VisitorType::Identified);
        assert_eq!(visitor_type(false, true, false), VisitorType::Returning);
        assert_eq!(visitor_type(false, false, true), VisitorType::Returning);
        assert_eq!(visitor_type(false, false, false), VisitorType::New);
        for t in [
            VisitorType::New,
            VisitorType::Returning,
            VisitorType::Identified,
        ] {
            assert_eq!(VisitorType::parse(t.as_str()), Some(t));
        }
        assert!(VisitorType::parse("vip").is_none());
    }

    #[test]
    fn widget_fields_are_bounded() {
        assert!(session_id("s", "abcdefghij012345").is_ok());
        for bad in [
            "short",
            "has space in it!!",
            &"x".repeat(129),
            "ünïcödé-0123456789",
        ] {
            assert!(session_id("s", bad).is_err(), "{bad}");
        }
        assert_eq!(page_url("p", "").unwrap(), "");
        assert!(page_url("p", "https://shop.example.com/cart?x=1").is_ok());
        for bad in [
            "javascript:alert(1)",
            "ftp://x.example",
            "not a url",
            "https://",
        ] {
            assert!(page_url("p", bad).is_err(), "{bad}");
        }
        assert!(page_url("p", &format!("https://a.example/{}", "x".repeat(MAX_URL))).is_err());
        assert_eq!(country("c", "de").unwrap(), "DE");
        assert!(country("c", "DEU").is_err());
        assert!(language("l", "pt-BR").is_ok());
        assert!(language("l", "-x").is_err());
        assert_eq!(score("s", 5).unwrap(), 5);
        for bad in [0, 6, 256 + 3] {
            assert!(score("s", bad).is_err(), "{bad}");
        }
        let proof = "a".repeat(64);
        assert!(identity("i", "u1", &proof).is_ok());
        assert!(identity("i", "", &proof).is_err());
        assert!(identity("i", "u1", "abc").is_err());
        assert!(identity("i", "u1", &"g".repeat(64)).is_err());
    }

    #[test]
    fn attributes_are_bounded_and_every_bad_one_is_named() {
        use std::collections::HashMap;
        let ok: HashMap<String, String> = [("plan".into(), "pro".into())].into();
        assert_eq!(attributes("a", &ok).unwrap().len(), 1);
        let many: HashMap<String, String> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(attributes("a", &many).is_err());
        let bad: HashMap<String, String> = [
            ("has space".into(), "v".into()),
            ("long".into(), "v".repeat(MAX_ATTRIBUTE_VALUE + 1)),
        ]
        .into();
        let errs = attributes("a", &bad).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().any(|e| e.field == "a[long]"));
        // A bad name is never echoed into the field path.
        assert!(errs.iter().any(|e| e.field == "a"));
    }
}
