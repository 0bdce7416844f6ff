//! Typed ids: one newtype per kind of row, so a user id can never be passed where a tenant id
//! is expected. They are created fresh (UUIDv7, time-ordered) or parsed from the wire. None
//! has a `Default`: a default that minted a random id would hide a missing one.

use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::Uuid as SqlUuid;
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(transparent)]
        #[diesel(sql_type = SqlUuid)]
        pub struct $name(Uuid);

        // No Default on purpose: `new` mints a fresh id, and a caller must say so.
        #[allow(clippy::new_without_default)]
        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// Wraps an existing UUID.
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            /// The UUID inside.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
            /// Parses the hyphenated or simple form; None for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::try_parse(s).ok().map(Self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ToSql<SqlUuid, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
                <Uuid as ToSql<SqlUuid, Pg>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<SqlUuid, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
                <Uuid as FromSql<SqlUuid, Pg>>::from_sql(bytes).map(Self)
            }
        }
    };
}

typed_id!(
    /// Id of a tenant (company).
    TenantId
);
typed_id!(
    /// Id of an agent (a user of a tenant).
    UserId
);
typed_id!(
    /// Id of a widget API key.
    ApiKeyId
);
typed_id!(
    /// Id of a refresh token.
    RefreshTokenId
);
typed_id!(
    /// Id shared by every refresh token descended from one login.
    TokenFamilyId
);
typed_id!(
    /// Id of a website visitor.
    VisitorId
);
typed_id!(
    /// Id of a conversation.
    ConversationId
);
typed_id!(
    /// Id of a message.
    MessageId
);
typed_id!(
    /// Id of a workflow.
    WorkflowId
);
typed_id!(
    /// Id of a durable timer.
    TimerId
);
typed_id!(
    /// Id of an assignment of a chat to an agent.
    AssignmentId
);
