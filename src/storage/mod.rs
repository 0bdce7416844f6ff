//! PostgreSQL access: the pool, migrations, and the two kinds of transaction the engine may
//! open. A [`TenantTx`] is the only handle tenant-owned queries accept; it is opened from a
//! [`TenantScope`] and sets `app.tenant_id` for its transaction only (`set_config(.., true)`),
//! so row-level security backs every query and nothing leaks into a pooled connection.
//!
//! A set-based update joined to `unnest(ids, values)` also filters its key with
//! `= ANY(ids)`: joined to the unnest alone, the cached generic plan hash-joins against every
//! row of the tenant, so each batch would cost as much as the tenant's whole table.
//!
//! A read that may return many rows of one tenant (the whole queue, a page of it) reads one
//! table per statement and fetches related rows by primary key: a join's generic plan is
//! made for the table sizes of the moment it was prepared, and one prepared while the
//! tables were small joined a 10,000-entry queue by filtering every pair.

pub mod analytics;
pub mod announce;
pub mod api_keys;
pub mod conversations;
pub mod dispatch;
mod error;
pub mod listen;
pub mod messages;
pub mod presence;
pub mod queue;
pub mod routing;
pub mod schema;
pub mod spine;
pub mod sql;
pub mod tenants;
pub mod timers;
pub mod tokens;
pub mod users;
pub mod visitors;
pub mod workflows;

use std::sync::Mutex;
use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{ManagerConfig, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_async::{AsyncMigrationHarness, TransactionManager};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::tenancy::{OperatorScope, SystemCap, TenantScope};
use announce::{Announcer, Notice};

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The role the server runs as: neither owner nor superuser, so row-level security applies.
pub const APP_ROLE: &str = "chat_engine_app";

type Conn = Object<AsyncPgConnection>;
type TxManager = <AsyncPgConnection as AsyncConnection>::TransactionManager;

/// Runs pending migrations over `url` (the schema owner's connection).
pub async fn migrate(url: &str) -> AppResult<()> {
    let conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| AppError::Unavailable(format!("connecting to run migrations: {e}")))?;
    let mut harness = AsyncMigrationHarness::new(conn);
    // The harness blocks internally; keep that off the async workers.
    tokio::task::block_in_place(|| harness.run_pending_migrations(MIGRATIONS).map(|_| ()))
        .map_err(|e| AppError::Internal(format!("migrations failed: {e}")))
}

/// The connection pool, and the node's announcer of committed events.
#[derive(Clone)]
pub struct Db {
    pool: Pool<AsyncPgConnection>,
    announcer: Announcer,
}

impl Db {
    /// A pool of at most `size` connections to `url`. Each connection switches to
    /// [`APP_ROLE`], so RLS holds even if `url` names a more privileged role.
    pub fn connect(url: &str, size: usize) -> AppResult<Self> {
        let mut config = ManagerConfig::default();
        // No `SELECT 1` on every checkout: it was a round trip and a statement before every
        // transaction (a ninth of all statements on the chat-start path). A connection whose
        // server went away is closed by its driver and dropped here; one that breaks in use
        // fails that call, and the pool replaces it.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(|url| {
            async move {
                let mut conn = AsyncPgConnection::establish(url).await?;
                // Generic plans: every statement here is an index lookup led by tenant_id,
                // and with array parameters PostgreSQL would otherwise plan each call again
                // (a tenth of its CPU on the send path). A generic plan cannot use a partial
                // index whose predicate column is bound: such a statement writes its
                // constants into its text (`routing::OPEN_CHATS_BY_AGENT`).
                conn.batch_execute(&format!(
                    "SET ROLE {APP_ROLE}; SET statement_timeout = '30s'; \
                     SET idle_in_transaction_session_timeout = '60s'; \
                     SET plan_cache_mode = force_generic_plan"
                ))
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            }
            .boxed()
        });
        let manager = AsyncDieselConnectionManager::new_with_config(url, config);
        let pool = Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| AppError::Internal(format!("building pool: {e}")))?;
        Ok(Self {
            pool,
            announcer: Announcer::start(url),
        })
    }

    async fn begin(&self) -> AppResult<Conn> {
        let mut conn = self.pool.get().await?;
        TxManager::begin_transaction(&mut *conn).await?;
        Ok(conn)
    }

    /// Opens a transaction scoped to one tenant.
    pub async fn tenant_tx(&self, scope: &TenantScope) -> AppResult<TenantTx> {
        let mut conn = self.pool.get().await?;
        let tenant_id = scope.tenant_id();
        TxManager::begin_transaction_sql(&mut *conn, &begin_sql(tenant_id)).await?;
        Ok(self.tx_on(conn, tenant_id, false))
    }

    /// A transaction scoped to one tenant whose `BEGIN` is not sent yet: [`TenantTx::begin`]
    /// sends it. Joined first, ahead of independent statements
    /// (`try_join!(tx.begin(), a(&tx), b(&tx))`), it travels in their round trip instead of
    /// one of its own: the writer's batches, where a round trip is a fifth of the batch.
    /// Such a transaction is begun and committed by hand, outside diesel's transaction
    /// manager; like any other, one dropped unfinished throws its connection away.
    pub async fn tenant_tx_pipelined(&self, scope: &TenantScope) -> AppResult<TenantTx> {
        let conn = self.pool.get().await?;
        Ok(self.tx_on(conn, scope.tenant_id(), true))
    }

    fn tx_on(&self, conn: Conn, tenant_id: TenantId, by_hand: bool) -> TenantTx {
        TenantTx {
            conn: Some(conn),
            tenant_id,
            notices: Mutex::new(Vec::new()),
            announcer: self.announcer.clone(),
            by_hand,
        }
    }

    /// One round trip on a pooled connection: whether the database answers (health).
    pub async fn ping(&self) -> AppResult<()> {
        let mut conn = self.pool.get().await?;
        conn.batch_execute("SELECT 1").await?;
        Ok(())
    }

    /// Opens a read transaction over every tenant's event spine (heads and entries only),
    /// for the node's spine follower.
    pub async fn spine_follower_tx(&self, _: &SystemCap) -> AppResult<FollowerTx> {
        let mut conn = self.pool.get().await?;
        TxManager::begin_transaction_sql(
            &mut *conn,
            "BEGIN READ ONLY; SELECT set_config('app.spine_follower', 'on', true)",
        )
        .await?;
        Ok(FollowerTx { conn: Some(conn) })
    }

    /// Opens a transaction with the operator's cross-tenant rights on the tenants table.
    pub async fn operator_tx(&self, _scope: &OperatorScope) -> AppResult<OperatorTx> {
        let mut conn = self.begin().await?;
        diesel::select(set_config("app.operator", "on".to_owned()))
            .execute(&mut *conn)
            .await?;
        Ok(OperatorTx { conn: Some(conn) })
    }
}

/// `BEGIN` and the tenant setting, in one simple query (so one round trip). The id is a
/// parsed UUID (hex digits and dashes only), so writing it into the text cannot change the
/// statement.
fn begin_sql(tenant_id: TenantId) -> String {
    format!("BEGIN; SELECT set_config('app.tenant_id', '{tenant_id}', true)")
}

diesel::define_sql_function! {
    /// `set_config(name, value, is_local => true)`: the setting ends with the transaction.
    #[sql_name = "set_config"]
    fn set_config_local(name: Text, value: Text, is_local: diesel::sql_types::Bool) -> Text;
}

fn set_config(name: &'static str, value: String) -> set_config_local<&'static str, String, bool> {
    set_config_local(name, value, true)
}

/// Commits or, when dropped unfinished, throws away the connection so the server rolls back
/// and releases its locks at once (a pooled connection with an open transaction would hold
/// them until its next checkout).
macro_rules! tx_common {
    ($t:ty) => {
        impl $t {
            /// The connection, for queries in `storage`.
            pub(crate) fn conn(&mut self) -> &mut AsyncPgConnection {
                self.conn.as_mut().expect("transaction used after commit")
            }

            async fn commit_conn(&mut self) -> AppResult<()> {
                let mut conn = self.conn.take().expect("transaction committed twice");
                TxManager::commit_transaction(&mut *conn).await?;
                Ok(())
            }
        }

        impl Drop for $t {
            fn drop(&mut self) {
                if let Some(conn) = self.conn.take() {
                    drop(Object::take(conn));
                }
            }
        }
    };
}

/// A transaction bound to one tenant; tenant-owned queries take it.
pub struct TenantTx {
    conn: Option<Conn>,
    tenant_id: TenantId,
    /// Sent by the announcer once the transaction has committed.
    notices: Mutex<Vec<Notice>>,
    announcer: Announcer,
    /// Begun with [`TenantTx::begin`] rather than by diesel's transaction manager, which so
    /// does not know of it: committed by hand too.
    by_hand: bool,
}

impl TenantTx {
    /// The tenant every query in this transaction is for.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    /// The connection shared, so independent queries can be pipelined: each is sent before
    /// the previous one's answer arrives.
    pub(crate) fn shared(&self) -> &AsyncPgConnection {
        self.conn.as_ref().expect("transaction used after commit")
    }

    /// Queues notices to be sent on `channel` once this transaction has committed (and never
    /// if it rolls back).
    pub(crate) fn announce(&self, channel: &'static str, payloads: Vec<String>) {
        let mut notices = self.notices.lock().unwrap_or_else(|e| e.into_inner());
        notices.extend(payloads.into_iter().map(|p| (channel, p)));
    }

    /// Sends the `BEGIN` of a transaction from [`Db::tenant_tx_pipelined`] as soon as it is
    /// first polled (the simple query is written before its first await), so statements
    /// joined after it reach the server behind it.
    pub(crate) async fn begin(&self) -> AppResult<()> {
        debug_assert!(self.by_hand, "begin() on a transaction that has begun");
        let mut conn = self.shared();
        SimpleAsyncConnection::batch_execute(&mut conn, &begin_sql(self.tenant_id)).await?;
        Ok(())
    }

    /// The `COMMIT` of a transaction from [`Db::tenant_tx_pipelined`], to be joined last
    /// behind its final statements (`try_join!(a(&tx), b(&tx), tx.commit_pipelined())`, then
    /// [`TenantTx::committed`]), so that it shares their round trip. It must reach the server
    /// after them, and it does: the join polls in order, and the COMMIT goes through the
    /// connection's statement cache like them, whose lock is first come, first served and
    /// is released by each statement in the same poll that writes its execution (how
    /// diesel-async 0.9 works: check both again before upgrading it, since a COMMIT that
    /// overtook the insert would leave the batch's seqs as a gap). A statement before it
    /// that fails fails the join, and the transaction is thrown away with its connection.
    pub(crate) async fn commit_pipelined(&self) -> AppResult<()> {
        debug_assert!(
            self.by_hand,
            "commit_pipelined() outside a pipelined transaction"
        );
        sql::prepared("COMMIT").execute(&mut self.shared()).await?;
        Ok(())
    }

    /// Ends a transaction whose [`TenantTx::commit_pipelined`] was answered: its connection
    /// goes back to the pool and its notices to this node's announcer.
    pub(crate) fn committed(mut self) {
        drop(self.conn.take());
        let notices = std::mem::take(self.notices.get_mut().unwrap_or_else(|e| e.into_inner()));
        self.announcer.send(notices);
    }

    /// Commits, then queues its notices to this node's announcer.
    pub async fn commit(mut self) -> AppResult<()> {
        // A failed COMMIT drops `self` unfinished: its connection is thrown away.
        if self.by_hand {
            self.commit_pipelined().await?;
        } else {
            self.commit_conn().await?;
        }
        self.committed();
        Ok(())
    }
}

tx_common!(TenantTx);

/// A transaction with operator rights on the tenants table.
pub struct OperatorTx {
    conn: Option<Conn>,
}

tx_common!(OperatorTx);

/// A read-only transaction over every tenant's event spine.
pub struct FollowerTx {
    conn: Option<Conn>,
}

tx_common!(FollowerTx);

macro_rules! plain_commit {
    ($($t:ty),*) => {$(
        impl $t {
            /// Commits the transaction.
            pub async fn commit(mut self) -> AppResult<()> {
                self.commit_conn().await
            }
        }
    )*};
}
plain_commit!(OperatorTx, FollowerTx);
