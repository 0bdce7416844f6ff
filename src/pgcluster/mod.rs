//! A private PostgreSQL cluster run from the server binaries installed on the machine.
//!
//! `serve`/`demo` use it when no DATABASE_URL is configured, and the integration-test harness
//! starts one per test process. This module owns that cluster's whole life: finding the
//! binaries ([`binaries`]), the data directory and the account the server runs as
//! ([`layout`]), what an earlier run left in the lock file ([`lockfile`]), the postmaster
//! child process ([`postmaster`]), roles and databases through `psql` ([`psql`]), restarting
//! a postmaster that died ([`supervisor`]), and shutdown.
//!
//! The postmaster is spawned directly rather than through `pg_ctl` so that its exit is
//! observed as a child's exit and its shutdown is ordered by us. Authentication is `trust`,
//! which is tolerable only because the server listens on 127.0.0.1 alone and its unix socket
//! sits inside the 0700 data directory; any local account can still reach the TCP port, so
//! this is a development and test convenience, not a deployment.

mod binaries;
mod layout;
mod lockfile;
mod postmaster;
mod psql;
mod supervisor;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use binaries::{LIB_ROOT, PgBins, discover, matching_version, path_dirs};
use layout::Layout;
use postmaster::{
    Retry, free_port, initdb, open_log, postgres_command, shut_down, spawn, wait_ready,
};
use supervisor::Supervisor;

/// The unprivileged role the server connects as; migrations and DDL use the superuser instead.
pub use crate::storage::APP_ROLE;

const SUPERUSER: &str = "chat_engine";
const LISTEN_HOST: &str = "127.0.0.1";
const PORT_ATTEMPTS: u32 = 5;
/// How long a start waits for the processes of a server that died to let go of its shared
/// memory, and how often it tries meanwhile.
const LINGER_WINDOW: Duration = Duration::from_secs(30);
const LINGER_POLL: Duration = Duration::from_millis(250);
/// What a URL path segment may hold unescaped (RFC 3986 "unreserved").
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A running PostgreSQL cluster owned by this process.
///
/// Stop it with [`PrivateCluster::stop`]; dropping it instead performs the same fast shutdown
/// synchronously, blocking the current thread until the postmaster exits.
#[derive(Debug)]
pub struct PrivateCluster {
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    bins: PgBins,
    parent_death_signal: bool,
    /// Shared with the supervisor, which puts a new postmaster in when the old one died.
    postmaster: Arc<Mutex<Slot>>,
    supervisor: Option<Supervisor>,
}

/// The current postmaster, and whether the cluster has been stopped (after which nobody may
/// put a new one in).
#[derive(Debug)]
struct Slot {
    child: Option<Child>,
    stopped: bool,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // The guarded data stays consistent at every step, so a panic elsewhere cannot spoil it.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A cluster stopped by [`PrivateCluster::stop_for_restart`], to be started again at the same
/// address.
#[derive(Debug)]
pub struct StoppedCluster {
    data_dir: PathBuf,
    port: u16,
    parent_death_signal: bool,
    supervised: bool,
}

impl StoppedCluster {
    /// Starts the cluster again on its data directory and port, as it was started before
    /// (parent-death signal, restarting when it exits).
    pub async fn start(self) -> Result<PrivateCluster> {
        let mut cluster =
            PrivateCluster::start_inner(&self.data_dir, self.parent_death_signal, Some(self.port))
                .await?;
        if self.supervised {
            cluster.restart_when_it_exits()?;
        }
        Ok(cluster)
    }
}

impl PrivateCluster {
    /// Finds the binaries, runs initdb if `data_dir` holds no cluster yet, starts postgres
    /// listening on 127.0.0.1 at a free port, and waits until it accepts connections.
    ///
    /// A postmaster of `data_dir` that an earlier run of this code started and left behind
    /// when it died is stopped first; one that is still some live process's is not, and the
    /// start fails. The unix socket lives inside the data directory (or, when that path is
    /// too long for a socket address, in a private directory under /tmp). Server output is
    /// appended to `postgres.log` next to the data directory. When running as root the
    /// cluster runs as the `postgres` account; if that account cannot reach `data_dir` (say
    /// it lives under a 0700 /root), the cluster is kept in
    /// `/tmp/chat-engine-pg-<hash of data_dir>` instead, which [`PrivateCluster::data_dir`]
    /// reports.
    pub async fn start(data_dir: &Path) -> Result<PrivateCluster> {
        Self::start_inner(data_dir, false, None).await
    }

    /// Like [`PrivateCluster::start`], but the postmaster also gets SIGINT (fast shutdown)
    /// when this process dies, however it dies, so that no server outlives its process.
    ///
    /// Linux sends a parent-death signal when the *thread* that forked the child exits, not
    /// the process. A cluster spawned from a test's own thread, or from a tokio blocking-pool
    /// thread, would therefore be shut down as soon as that thread finished. To make the
    /// signal mean "the process died", the postmaster is forked from an internal thread
    /// that lives until the process exits; callers need no long-lived thread of their own.
    pub async fn start_with_parent_death_signal(data_dir: &Path) -> Result<PrivateCluster> {
        Self::start_inner(data_dir, true, None).await
    }

    /// From now on, when the postmaster exits without being asked to (killed, crashed), a
    /// new one is started on the same data directory and port, and the log says so. Needs a
    /// tokio runtime, on which the watching task runs until the cluster is stopped.
    pub fn restart_when_it_exits(&mut self) -> Result<()> {
        if self.supervisor.is_none() {
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|e| anyhow!("watching the private PostgreSQL server: {e}"))?;
            self.supervisor = Some(Supervisor::start(self, &runtime));
        }
        Ok(())
    }

    /// Stops the cluster and starts it again on the same data directory and port, as a
    /// database restart looks to its clients (tests use it to restart under load).
    pub async fn restart(self) -> Result<PrivateCluster> {
        self.stop_for_restart().await?.start().await
    }

    /// Stops the cluster like [`PrivateCluster::stop`], keeping what it takes to start it
    /// again at the same address, for as long a database outage as the caller wants.
    pub async fn stop_for_restart(self) -> Result<StoppedCluster> {
        let stopped = StoppedCluster {
            data_dir: self.data_dir.clone(),
            port: self.port,
            parent_death_signal: self.parent_death_signal,
            supervised: self.supervisor.is_some(),
        };
        self.stop().await?;
        Ok(stopped)
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory that actually holds the cluster; differs from the requested one only when
    /// running as root fell back to a directory under /tmp.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// File the server's output is appended to; start-up errors quote its tail.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// URL for the superuser (owner of the schema, used for migrations and CREATE DATABASE),
    /// for database `db`.
    pub fn admin_url(&self, db: &str) -> String {
        self.url(SUPERUSER, db)
    }

    /// URL for [`APP_ROLE`] on database `db`.
    pub fn app_url(&self, db: &str) -> String {
        self.url(APP_ROLE, db)
    }

    /// Fast shutdown: SIGINT to the postmaster, escalating to SIGQUIT and then SIGKILL if it
    /// has not exited after 10 and 5 more seconds; an escalation is reported as an error.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.stop().await;
        }
        let Some(mut postmaster) = self.take_postmaster() else {
            return Ok(());
        };
        let status = tokio::task::spawn_blocking(move || shut_down(&mut postmaster))
            .await
            .context("waiting for postgres to shut down")?
            .context("shutting down postgres")?;
        if !status.success() {
            bail!(
                "postgres did not shut down cleanly ({status}); see {}",
                self.log_path.display()
            );
        }
        tracing::info!(data_dir = %self.data_dir.display(), "private PostgreSQL stopped");
        Ok(())
    }

    /// Marks the cluster stopped and hands out its postmaster, if one runs.
    fn take_postmaster(&self) -> Option<Child> {
        let mut slot = lock(&self.postmaster);
        slot.stopped = true;
        slot.child.take()
    }

    async fn start_inner(
        data_dir: &Path,
        parent_death_signal: bool,
        fixed_port: Option<u16>,
    ) -> Result<PrivateCluster> {
        let started = Instant::now();
        let candidates = discover(&path_dirs(), &[PathBuf::from(LIB_ROOT)])?;
        let requested = data_dir.to_path_buf();
        let layout = tokio::task::spawn_blocking(move || Layout::prepare(&requested))
            .await
            .context("preparing the data directory")??;
        let bins = match &layout.cluster_version {
            Some(version) => matching_version(&candidates, version, &layout.data).await?,
            None => candidates[0].clone(),
        };
        if layout.cluster_version.is_none() {
            initdb(&bins, &layout).await?;
        }
        let mut attempt = 1;
        let mut lingering_since: Option<Instant> = None;
        loop {
            let port = match fixed_port {
                Some(p) => p,
                None => free_port()?,
            };
            let (log, log_offset) = open_log(&layout.log)?;
            let command = postgres_command(&bins, &layout, port, log)?;
            let mut postmaster = spawn(command, parent_death_signal)
                .await
                .with_context(|| format!("starting {}", bins.postgres.display()))?;
            let ready = match lockfile::record_owner(&layout, postmaster.id()) {
                Ok(()) => wait_ready(&bins, &layout, port, &mut postmaster, log_offset).await,
                Err(error) => Err(postmaster::StartFailure {
                    retry: Retry::No,
                    error,
                }),
            };
            let failure = match ready {
                Ok(()) => {
                    tracing::info!(
                        port,
                        data_dir = %layout.data.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "private PostgreSQL ready"
                    );
                    return Ok(PrivateCluster {
                        port,
                        data_dir: layout.data,
                        log_path: layout.log,
                        bins,
                        parent_death_signal,
                        postmaster: Arc::new(Mutex::new(Slot {
                            child: Some(postmaster),
                            stopped: false,
                        })),
                        supervisor: None,
                    });
                }
                Err(failure) => failure,
            };
            let _ = tokio::task::spawn_blocking(move || shut_down(&mut postmaster)).await;
            match failure.retry {
                Retry::PortTaken if attempt < PORT_ATTEMPTS => {
                    tracing::warn!(port, "port was taken before postgres bound it; retrying");
                    attempt += 1;
                    if fixed_port.is_some() {
                        tokio::time::sleep(LINGER_POLL).await;
                    }
                }
                Retry::Later
                    if lingering_since.is_none_or(|since| since.elapsed() < LINGER_WINDOW) =>
                {
                    if lingering_since.is_none() {
                        tracing::info!(
                            data_dir = %layout.data.display(),
                            "processes of the previous server still hold its shared memory; \
                             waiting for them to exit"
                        );
                        lingering_since = Some(Instant::now());
                    }
                    tokio::time::sleep(LINGER_POLL).await;
                }
                _ => return Err(failure.error),
            }
        }
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@{LISTEN_HOST}:{}/{}",
            self.port,
            utf8_percent_encode(db, PATH_SEGMENT)
        )
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Dropping the supervisor tells it to stop; a restart it has under way sees the
        // cluster stopped when it finishes and shuts its new postmaster down itself.
        self.supervisor = None;
        if let Some(mut postmaster) = self.take_postmaster() {
            match shut_down(&mut postmaster) {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::warn!(%status, "postgres did not shut down cleanly"),
                Err(e) => tracing::warn!(error = %e, "could not shut down postgres"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;

    use super::psql::{PSQL_TIMEOUT, psql};
    use super::*;

    /// World-traversable, so that the `postgres` account can reach it when tests run as root
    /// (otherwise the cluster would move to /tmp and outlive the directory).
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("pgcluster-")
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn database_names_are_percent_encoded_in_urls() {
        let encode = |s| utf8_percent_encode(s, PATH_SEGMENT).to_string();
        assert_eq!(encode("chat_engine-1.x~"), "chat_engine-1.x~");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }

    /// Starts a real cluster: create, reuse, stale lock file, live-postmaster refusal.
    /// One test so that initdb (the slow part) runs once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_cluster_lifecycle() {
        let scratch = scratch();
        let requested = scratch.path().join("pg");

        let cluster = PrivateCluster::start(&requested).await.unwrap();
        assert!(cluster.port() > 0);
        cluster.ensure_app_role().await.unwrap();
        cluster.ensure_app_role().await.unwrap();
        cluster.create_database("lifecycle").await.unwrap();
        cluster.create_database("lifecycle").await.unwrap();
        assert_eq!(
            cluster.app_url("lifecycle"),
            format!(
                "postgres://{APP_ROLE}@127.0.0.1:{}/lifecycle",
                cluster.port()
            )
        );
        assert_eq!(
            cluster.admin_url("lifecycle"),
            format!(
                "postgres://{SUPERUSER}@127.0.0.1:{}/lifecycle",
                cluster.port()
            )
        );

        let who = psql(
            PSQL_TIMEOUT,
            &cluster.bins,
            cluster.port,
            APP_ROLE,
            "lifecycle",
            "SELECT current_user || ' ' || rolsuper || rolbypassrls || rolcreatedb \
             || rolcreaterole FROM pg_roles WHERE rolname = current_user",
        )
        .await
        .unwrap();
        assert_eq!(who, format!("{APP_ROLE} falsefalsefalsefalse"));
        let owner = psql(
            PSQL_TIMEOUT,
            &cluster.bins,
            cluster.port,
            SUPERUSER,
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'lifecycle'",
        )
        .await
        .unwrap();
        assert_eq!(owner, SUPERUSER);

        // A second start on a live data directory whose owner still runs it must refuse
        // rather than fight for it.
        let err = PrivateCluster::start(&requested).await.unwrap_err();
        assert!(format!("{err:#}").contains("still running"), "{err:#}");

        let data_dir = cluster.data_dir().to_path_buf();
        let bins = cluster.bins.clone();
        cluster.stop().await.unwrap();

        // A port that something else holds must come back as taken, so that start retries
        // elsewhere; the squatter accepts connections but never answers, like a stuck service.
        let squatter = TcpListener::bind((LISTEN_HOST, 0)).unwrap();
        let port = squatter.local_addr().unwrap().port();
        let layout = Layout::prepare(&requested).unwrap();
        let (log, offset) = open_log(&layout.log).unwrap();
        let command = postgres_command(&bins, &layout, port, log).unwrap();
        let mut postmaster = spawn(command, false).await.unwrap();
        let failure = wait_ready(&bins, &layout, port, &mut postmaster, offset)
            .await
            .unwrap_err();
        assert_eq!(failure.retry, Retry::PortTaken, "{:#}", failure.error);
        shut_down(&mut postmaster).unwrap();
        drop(squatter);

        // A crashed run leaves its lock file naming a process that is gone or, after a
        // reboot, one that is alive but unrelated: here, this test process.
        fs::write(
            data_dir.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), data_dir.display()),
        )
        .unwrap();
        let cluster = PrivateCluster::start(&requested).await.unwrap();
        assert_eq!(cluster.data_dir(), data_dir);
        let kept = psql(
            PSQL_TIMEOUT,
            &cluster.bins,
            cluster.port,
            APP_ROLE,
            "lifecycle",
            "SELECT 1",
        )
        .await
        .unwrap();
        assert_eq!(kept, "1");
        drop(cluster);
        assert!(!data_dir.join("postmaster.pid").exists());
    }
}
