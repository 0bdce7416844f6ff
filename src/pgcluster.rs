//! A private PostgreSQL cluster run from the server binaries installed on the machine.
//!
//! `serve`/`demo` use it when no DATABASE_URL is configured, and the integration-test harness
//! starts one per test process. This module owns that cluster's whole life: finding the
//! binaries, `initdb`, the postmaster child process, the split between the superuser (which
//! owns the schema) and [`APP_ROLE`] (which the server runs as), and shutdown.
//!
//! The postmaster is spawned directly rather than through `pg_ctl` so that its exit is
//! observed as a child's exit and its shutdown is ordered by us. Authentication is `trust`,
//! which is tolerable only because the server listens on 127.0.0.1 alone and its unix socket
//! sits inside the 0700 data directory; any local account can still reach the TCP port, so
//! this is a development and test convenience, not a deployment.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::process::Command;
use tokio::sync::oneshot;

/// The unprivileged role the server connects as; migrations and DDL use the superuser instead.
pub use crate::storage::APP_ROLE;

const SUPERUSER: &str = "chat_engine";
const LISTEN_HOST: &str = "127.0.0.1";
const LIB_ROOT: &str = "/usr/lib/postgresql";
const TMP_PREFIX: &str = "/tmp/chat-engine-pg-";
const REQUIRED_BINARIES: [&str; 3] = ["initdb", "postgres", "psql"];

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(25);
const FAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const IMMEDIATE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const EXIT_POLL: Duration = Duration::from_millis(10);
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
/// Short, because whatever answers on the port may not be postgres and may never reply.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
const PORT_ATTEMPTS: u32 = 5;
const LOG_ROTATE_BYTES: u64 = 16 << 20;
const LOG_TAIL_LINES: usize = 40;
/// `sizeof(sockaddr_un.sun_path)` on Linux less the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// The longest socket file name postgres puts in `unix_socket_directories`.
const SOCKET_FILE_MAX: &str = "/.s.PGSQL.65535";
/// NAMEDATALEN - 1: postgres silently truncates longer names, which would make URLs lie.
const MAX_IDENTIFIER_BYTES: usize = 63;

const NOT_FOUND: &str = "no PostgreSQL server binaries were found on PATH or under \
/usr/lib/postgresql/*/bin (needed: initdb, postgres and psql from one installation, not \
Debian's pg_wrapper scripts); on Debian/Ubuntu `apt-get install postgresql` provides them, or \
set DATABASE_URL (CHAT_ENGINE_DATABASE_URL) to use an existing PostgreSQL server instead of a \
private one";

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
    /// `None` once stopped, so that `Drop` knows there is nothing left to do.
    postmaster: Option<Child>,
}

impl PrivateCluster {
    /// Finds the binaries, runs initdb if `data_dir` holds no cluster yet, starts postgres
    /// listening on 127.0.0.1 at a free port, and waits until it accepts connections.
    ///
    /// The unix socket lives inside the data directory (or, when that path is too long for a
    /// socket address, in a private directory under /tmp). Server output is appended to
    /// `postgres.log` next to the data directory. When running as root the cluster runs as
    /// the `postgres` account; if that account cannot reach `data_dir` (say it lives under a
    /// 0700 /root), the cluster is kept in `/tmp/chat-engine-pg-<hash of data_dir>` instead,
    /// which [`PrivateCluster::data_dir`] reports.
    pub async fn start(data_dir: &Path) -> Result<PrivateCluster> {
        Self::start_inner(data_dir, false, None).await
    }

    /// Stops the cluster and starts it again on the same data directory and port, as a
    /// database restart looks to its clients (tests use it to restart under load).
    pub async fn restart(self) -> Result<PrivateCluster> {
        let (dir, port) = (self.data_dir.clone(), self.port);
        self.stop().await?;
        Self::start_inner(&dir, true, Some(port)).await
    }

    /// Like [`PrivateCluster::start`], but the postmaster also gets SIGINT (fast shutdown)
    /// when this process dies, however it dies, so test processes never leave clusters behind.
    ///
    /// Linux sends a parent-death signal when the *thread* that forked the child exits, not
    /// the process. A cluster spawned from a test's own thread, or from a tokio blocking-pool
    /// thread, would therefore be shut down as soon as that thread finished. To make the
    /// signal mean "the process died", the postmaster is forked from an internal thread
    /// that lives until the process exits; callers need no long-lived thread of their own.
    pub async fn start_with_parent_death_signal(data_dir: &Path) -> Result<PrivateCluster> {
        Self::start_inner(data_dir, true, None).await
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

    /// Creates database `db` if missing (owned by the superuser).
    pub async fn create_database(&self, db: &str) -> Result<()> {
        check_identifier(db)?;
        let exists = self
            .admin_sql(&format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(db)
            ))
            .await?;
        if exists == "1" {
            return Ok(());
        }
        match self
            .admin_sql(&format!("CREATE DATABASE {}", quote_ident(db)))
            .await
        {
            Ok(_) => Ok(()),
            // Another process sharing this cluster may have won the race since the check.
            Err(e) if format!("{e:#}").contains("already exists") => Ok(()),
            Err(e) => Err(e.context(format!("creating database {db:?}"))),
        }
    }

    /// Makes sure [`APP_ROLE`] exists and can log in, as NOSUPERUSER NOBYPASSRLS NOCREATEDB
    /// NOCREATEROLE NOREPLICATION; existing roles are altered back to exactly that.
    pub async fn ensure_app_role(&self) -> Result<()> {
        // The exception handler covers a concurrent creator as well as an existing role;
        // both the duplicate_object and the catalog unique_violation forms can occur.
        let attrs = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION";
        let role = quote_ident(APP_ROLE);
        let sql = format!(
            "DO $$ BEGIN CREATE ROLE {role} {attrs}; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN ALTER ROLE {role} {attrs}; \
             END $$"
        );
        self.admin_sql(&sql)
            .await
            .with_context(|| format!("ensuring role {APP_ROLE}"))?;
        Ok(())
    }

    /// Fast shutdown: SIGINT to the postmaster, escalating to SIGQUIT and then SIGKILL if it
    /// has not exited after 10 and 5 more seconds; an escalation is reported as an error.
    pub async fn stop(mut self) -> Result<()> {
        let Some(mut postmaster) = self.postmaster.take() else {
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
            match wait_ready(&bins, &layout, port, &mut postmaster, log_offset).await {
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
                        postmaster: Some(postmaster),
                    });
                }
                Err(failure) => {
                    let _ = tokio::task::spawn_blocking(move || shut_down(&mut postmaster)).await;
                    if failure.port_taken && attempt < PORT_ATTEMPTS {
                        tracing::warn!(port, "port was taken before postgres bound it; retrying");
                        attempt += 1;
                        continue;
                    }
                    return Err(failure.error);
                }
            }
        }
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@{LISTEN_HOST}:{}/{}",
            self.port,
            percent_encode(db)
        )
    }

    async fn admin_sql(&self, sql: &str) -> Result<String> {
        psql(&self.bins, self.port, SUPERUSER, "postgres", sql).await
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Some(mut postmaster) = self.postmaster.take() {
            match shut_down(&mut postmaster) {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::warn!(%status, "postgres did not shut down cleanly"),
                Err(e) => tracing::warn!(error = %e, "could not shut down postgres"),
            }
        }
    }
}

/// One installation's binaries, all from the same directory so their versions agree.
#[derive(Debug, Clone)]
struct PgBins {
    initdb: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

impl PgBins {
    fn in_dir(dir: &Path) -> Option<PgBins> {
        let [initdb, postgres, psql] = REQUIRED_BINARIES.map(|name| dir.join(name));
        [&initdb, &postgres, &psql]
            .iter()
            .all(|p| is_real_executable(p))
            .then_some(PgBins {
                initdb,
                postgres,
                psql,
            })
    }
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Candidate installations, best first: the one whose `postgres` is found on `path_dirs`
/// (followed through symlinks to its real directory), then `<lib root>/<version>/bin`,
/// highest version first.
fn discover(path_dirs: &[PathBuf], lib_roots: &[PathBuf]) -> Result<Vec<PgBins>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in path_dirs {
        let postgres = dir.join("postgres");
        if is_real_executable(&postgres)
            && let Ok(real) = fs::canonicalize(&postgres)
            && let Some(real_dir) = real.parent()
        {
            dirs.push(real_dir.to_path_buf());
        }
    }
    for root in lib_roots {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let key = parse_version(e.file_name().to_str()?)?;
                Some((key, e.path().join("bin")))
            })
            .collect();
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    }
    let mut seen = Vec::new();
    let found: Vec<PgBins> = dirs
        .into_iter()
        .filter(|d| {
            let key = fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            let new = !seen.contains(&key);
            seen.push(key);
            new
        })
        .filter_map(|d| PgBins::in_dir(&d))
        .collect();
    if found.is_empty() {
        bail!(NOT_FOUND);
    }
    Ok(found)
}

/// Debian's pg_wrapper (what /usr/bin/psql and friends point at) is a Perl script that picks
/// a version and cluster from its own configuration, so only compiled binaries count.
fn is_real_executable(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return false;
    }
    let mut magic = [0u8; 2];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic != b"#!")
}

fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// An existing cluster can only be run by binaries of the major version that created it.
async fn matching_version(candidates: &[PgBins], version: &str, data: &Path) -> Result<PgBins> {
    let mut seen = Vec::new();
    for bins in candidates {
        let out = Command::from(base_command(&bins.postgres, None))
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("running {} --version", bins.postgres.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = major_version(&text);
        if major.as_deref() == Some(version) {
            return Ok(bins.clone());
        }
        seen.push(format!("{} ({})", bins.postgres.display(), text.trim()));
    }
    bail!(
        "the cluster in {} was created by PostgreSQL {version}, but only other versions were \
         found: {}; install PostgreSQL {version} or move that directory aside",
        data.display(),
        seen.join(", ")
    )
}

/// Major version as written in PG_VERSION: "15" for 15.x, "9.6" for 9.6.x.
fn major_version(version_output: &str) -> Option<String> {
    let number = version_output
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number.split(|c: char| !c.is_ascii_digit());
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 {
        Some(first.to_string())
    } else {
        Some(format!("{first}.{}", parts.next()?))
    }
}

/// Account the server processes run as when we are root, since postgres refuses root.
#[derive(Debug, Clone)]
struct RunAs {
    uid: Uid,
    gid: Gid,
    name: String,
    home: PathBuf,
}

impl RunAs {
    fn postgres_account() -> Result<RunAs> {
        let user = User::from_name("postgres")
            .context("looking up the postgres account")?
            .ok_or_else(|| {
                anyhow!(
                    "running as root, and PostgreSQL refuses to run as root, but there is no \
                     `postgres` account to run it as; create one (installing the postgresql \
                     package does), run as an ordinary user, or set DATABASE_URL \
                     (CHAT_ENGINE_DATABASE_URL) to use an existing server"
                )
            })?;
        Ok(RunAs::from(user))
    }

    /// The supplementary groups are not considered: std drops them when switching uid.
    fn can_traverse(&self, meta: &fs::Metadata) -> bool {
        let mode = meta.mode();
        if meta.uid() == self.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == self.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }

    fn can_reach(&self, path: &Path) -> bool {
        path.ancestors()
            .skip(1)
            .all(|dir| fs::metadata(dir).is_ok_and(|m| self.can_traverse(&m)))
    }
}

impl From<User> for RunAs {
    fn from(user: User) -> RunAs {
        RunAs {
            uid: user.uid,
            gid: user.gid,
            name: user.name,
            home: user.dir,
        }
    }
}

/// Where the cluster's files go and whom its processes run as.
#[derive(Debug)]
struct Layout {
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    run_as: Option<RunAs>,
    /// Contents of PG_VERSION, or `None` when initdb still has to run.
    cluster_version: Option<String>,
}

impl Layout {
    fn prepare(requested: &Path) -> Result<Layout> {
        let requested = std::path::absolute(requested)
            .with_context(|| format!("resolving {}", requested.display()))?;
        let (Some(parent), Some(name)) = (requested.parent(), requested.file_name()) else {
            bail!("{} cannot be a data directory", requested.display());
        };
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let parent =
            fs::canonicalize(parent).with_context(|| format!("resolving {}", parent.display()))?;
        let requested = parent.join(name);
        let mut layout = if nix::unistd::geteuid().is_root() {
            Self::for_root(&requested, &parent)?
        } else {
            Layout {
                data: requested,
                socket_dir: PathBuf::new(),
                log: parent.join("postgres.log"),
                run_as: None,
                cluster_version: None,
            }
        };
        layout.cluster_version = prepare_data_dir(&layout.data, layout.run_as.as_ref())?;
        layout.socket_dir = socket_dir_for(&layout.data, layout.run_as.as_ref())?;
        if layout.cluster_version.is_some() {
            clear_stale_state(&layout.data, &layout.socket_dir)?;
        }
        Ok(layout)
    }

    fn for_root(requested: &Path, parent: &Path) -> Result<Layout> {
        let real = fs::canonicalize(requested).unwrap_or_else(|_| requested.to_path_buf());
        let existing_owner = match fs::metadata(real.join("PG_VERSION")) {
            Ok(_) => Some(fs::metadata(&real)?.uid()),
            Err(_) => None,
        };
        // A cluster an ordinary user created stays that user's: running it as them keeps every
        // file's ownership consistent, which postgres insists on.
        let run_as = match existing_owner {
            Some(uid) if uid != 0 => match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(user)) => RunAs::from(user),
                _ => bail!(
                    "{} holds a cluster owned by uid {uid}, which has no account to run it as",
                    real.display()
                ),
            },
            _ => RunAs::postgres_account()?,
        };
        if run_as.can_reach(&real) {
            return Ok(Layout {
                data: requested.to_path_buf(),
                socket_dir: PathBuf::new(),
                log: parent.join("postgres.log"),
                run_as: Some(run_as),
                cluster_version: None,
            });
        }
        if existing_owner.is_some() {
            bail!(
                "{} holds a cluster, but the {} account cannot reach it through its parent \
                 directories",
                real.display(),
                run_as.name
            );
        }
        // Making the user's own directories traversable would widen access to everything
        // under them, so the cluster moves somewhere the postgres account can reach instead.
        let base = PathBuf::from(format!(
            "{TMP_PREFIX}{:016x}",
            fnv1a(requested.as_os_str().as_bytes())
        ));
        private_dir(&base, Some(&run_as))?;
        tracing::info!(
            requested = %requested.display(),
            actual = %base.join("data").display(),
            account = %run_as.name,
            "the postgres account cannot reach the requested data directory; keeping the \
             cluster under /tmp instead"
        );
        Ok(Layout {
            data: base.join("data"),
            socket_dir: PathBuf::new(),
            log: base.join("postgres.log"),
            run_as: Some(run_as),
            cluster_version: None,
        })
    }
}

/// Creates the data directory if needed, hands it to `run_as`, and returns the version of
/// the cluster already in it.
fn prepare_data_dir(data: &Path, run_as: Option<&RunAs>) -> Result<Option<String>> {
    let meta = match fs::metadata(data) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(0o700)
                .create(data)
                .with_context(|| format!("creating {}", data.display()))?;
            fs::metadata(data)?
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", data.display())),
    };
    if !meta.is_dir() {
        bail!("{} exists and is not a directory", data.display());
    }
    let version = match fs::read_to_string(data.join("PG_VERSION")) {
        Ok(v) => Some(v.trim().to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}/PG_VERSION", data.display())),
    };
    if version.is_none() && fs::read_dir(data)?.next().is_some() {
        bail!(
            "{} is not empty but holds no PostgreSQL cluster (no PG_VERSION), perhaps from an \
             interrupted initdb; remove it or choose another directory",
            data.display()
        );
    }
    if let Some(run_as) = run_as
        && meta.uid() != run_as.uid.as_raw()
    {
        std::os::unix::fs::chown(data, Some(run_as.uid.as_raw()), Some(run_as.gid.as_raw()))
            .with_context(|| format!("handing {} to {}", data.display(), run_as.name))?;
    }
    // postgres refuses a data directory that group or others can write or, unless it is
    // 0750, read.
    if !matches!(meta.mode() & 0o777, 0o700 | 0o750) {
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to mode 0700", data.display()))?;
    }
    Ok(version)
}

/// Inside the data directory the socket is reachable only by the cluster's account (and
/// root), which matters under trust authentication; a short /tmp directory stands in when
/// that path would not fit in a socket address.
fn socket_dir_for(data: &Path, run_as: Option<&RunAs>) -> Result<PathBuf> {
    if data.as_os_str().len() + SOCKET_FILE_MAX.len() <= SUN_PATH_MAX {
        return Ok(data.to_path_buf());
    }
    let dir = PathBuf::from(format!(
        "{TMP_PREFIX}{:016x}.sock",
        fnv1a(data.as_os_str().as_bytes())
    ));
    private_dir(&dir, run_as)?;
    Ok(dir)
}

/// A 0700 directory in a world-writable place, refusing anything another account planted.
fn private_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<()> {
    let owner = run_as.map_or_else(nix::unistd::geteuid, |r| r.uid);
    match fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                bail!("{} exists and is not a directory", dir.display());
            }
            if meta.uid() != owner.as_raw() && meta.uid() != 0 {
                bail!(
                    "{} is owned by uid {}, not by this cluster's account; remove it",
                    dir.display(),
                    meta.uid()
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", dir.display())),
    }
    if let Some(run_as) = run_as {
        std::os::unix::fs::lchown(dir, Some(run_as.uid.as_raw()), Some(run_as.gid.as_raw()))
            .with_context(|| format!("handing {} to {}", dir.display(), run_as.name))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to mode 0700", dir.display()))
}

/// Removes what a crashed postmaster left behind, but refuses to touch a live one.
fn clear_stale_state(data: &Path, socket_dir: &Path) -> Result<()> {
    let pid_file = data.join("postmaster.pid");
    match fs::read_to_string(&pid_file) {
        Ok(contents) => {
            let pid = contents.lines().next().and_then(|l| l.trim().parse().ok());
            if let Some(pid) = pid
                && postmaster_alive(pid, data)
            {
                bail!(
                    "a PostgreSQL server (pid {pid}) is still running on {}, probably left by \
                     an earlier run; stop it with `kill -INT {pid}` and start again",
                    data.display()
                );
            }
            tracing::info!(
                pid_file = %pid_file.display(),
                "removing the lock file of a postmaster that is no longer running"
            );
            fs::remove_file(&pid_file)
                .with_context(|| format!("removing {}", pid_file.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", pid_file.display())),
    }
    // Each start picks a new port, so a crash's socket files would otherwise pile up.
    for entry in fs::read_dir(socket_dir)?.flatten() {
        if entry.file_name().as_bytes().starts_with(b".s.PGSQL.") {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// After a reboot or in a new container the old pid may belong to an unrelated process, or
/// to another cluster's postmaster, so only a postmaster working in `data` counts.
fn postmaster_alive(pid: i32, data: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    // The postmaster's working directory is its data directory; /proc hides it from other
    // non-root accounts, in which case the process name is the best evidence left.
    if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
        return fs::canonicalize(data).is_ok_and(|data| data == cwd);
    }
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
        Err(_) => true,
    }
}

fn base_command(program: &Path, run_as: Option<&RunAs>) -> StdCommand {
    let mut cmd = StdCommand::new(program);
    // PGDATA, PGPORT, PGUSER, PGOPTIONS, PGSERVICE and friends from the caller's environment
    // would silently retarget or reconfigure these tools.
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    // After dropping root the inherited working directory (often /root) may be unreadable.
    cmd.current_dir("/").stdin(Stdio::null());
    if let Some(run_as) = run_as {
        cmd.uid(run_as.uid.as_raw())
            .gid(run_as.gid.as_raw())
            .env("HOME", &run_as.home)
            .env("USER", &run_as.name)
            .env("LOGNAME", &run_as.name);
    }
    cmd
}

async fn initdb(bins: &PgBins, layout: &Layout) -> Result<()> {
    let started = Instant::now();
    let mut cmd = Command::from(base_command(&bins.initdb, layout.run_as.as_ref()));
    cmd.arg("-D")
        .arg(&layout.data)
        .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"])
        .kill_on_drop(true);
    let out = tokio::time::timeout(INITDB_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow!("initdb took longer than {INITDB_TIMEOUT:?}"))?
        .with_context(|| format!("running {}", bins.initdb.display()))?;
    if !out.status.success() {
        bail!(
            "initdb of {} failed ({}):\n{}{}",
            layout.data.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tracing::info!(
        data_dir = %layout.data.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "initialized a new PostgreSQL cluster"
    );
    Ok(())
}

/// Racy by nature (the port is free only until someone else binds it); `start` retries when
/// postgres reports the port taken.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((LISTEN_HOST, 0)).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Opens the server log for appending and returns where this run's output begins.
fn open_log(path: &Path) -> Result<(File, u64)> {
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = fs::rename(path, path.with_extension("log.1"));
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}

fn postgres_command(bins: &PgBins, layout: &Layout, port: u16, log: File) -> Result<StdCommand> {
    // The setting is a list, so a path containing a comma or a quote must be quoted.
    let mut sockets = b"unix_socket_directories=\"".to_vec();
    for &b in layout.socket_dir.as_os_str().as_bytes() {
        if b == b'"' {
            sockets.push(b'"');
        }
        sockets.push(b);
    }
    sockets.push(b'"');
    let mut cmd = base_command(&bins.postgres, layout.run_as.as_ref());
    cmd.arg("-D")
        .arg(&layout.data)
        .arg("-c")
        .arg(format!("port={port}"))
        .arg("-c")
        .arg(format!("listen_addresses={LISTEN_HOST}"))
        .arg("-c")
        .arg(OsString::from_vec(sockets))
        .args(["-c", "max_connections=200", "-c", "shared_buffers=128MB"])
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log)
        // A terminal's Ctrl-C goes to the whole foreground group; the server must outlive it
        // so that the application can drain its connections and then stop the cluster.
        .process_group(0);
    Ok(cmd)
}

async fn spawn(mut command: StdCommand, parent_death_signal: bool) -> io::Result<Child> {
    if !parent_death_signal {
        return command.spawn();
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the hook runs between fork and exec; it only makes the prctl and getppid
    // system calls and builds an io::Error from a raw errno, none of which allocates or locks.
    // It runs after std has switched uid, which matters because a uid change clears the
    // parent-death signal.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)?;
            // The parent may have died before the signal was armed; then nobody would send it.
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    spawner()?
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the postgres spawner thread is gone"))?;
    reply_rx
        .await
        .map_err(|_| io::Error::other("the postgres spawner thread is gone"))?
}

type SpawnRequest = (StdCommand, oneshot::Sender<io::Result<Child>>);

/// A thread that never exits, so that a parent-death signal armed by its children fires only
/// when the whole process goes away.
fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("pgcluster-spawner".into())
                .spawn(move || {
                    for (mut command, reply) in rx {
                        let _ = reply.send(command.spawn());
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("starting the postgres spawner thread: {e}")))
}

struct StartFailure {
    port_taken: bool,
    error: anyhow::Error,
}

async fn wait_ready(
    bins: &PgBins,
    layout: &Layout,
    port: u16,
    postmaster: &mut Child,
    log_offset: u64,
) -> Result<(), StartFailure> {
    let fail = |port_taken, error| StartFailure { port_taken, error };
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_probe: Option<anyhow::Error> = None;
    loop {
        match postmaster.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let tail = log_tail(&layout.log, log_offset);
                let port_taken = tail.contains("could not bind")
                    || tail.contains("could not create any TCP/IP sockets");
                return Err(fail(
                    port_taken,
                    anyhow!(
                        "postgres exited during start-up ({status}); last lines of {}:\n{tail}",
                        layout.log.display()
                    ),
                ));
            }
            Err(e) => return Err(fail(false, anyhow!(e).context("waiting for postgres"))),
        }
        if tokio::net::TcpStream::connect((LISTEN_HOST, port))
            .await
            .is_ok()
        {
            // Asking for the data directory proves the answer came from our server and not
            // from another cluster that grabbed the port between our probe and its bind.
            let probe = psql_within(
                PROBE_TIMEOUT,
                bins,
                port,
                SUPERUSER,
                "postgres",
                "SHOW data_directory",
            );
            let mut probe = std::pin::pin!(probe);
            // Keep watching the postmaster meanwhile: if it died (say, the port was taken),
            // whatever holds the port may keep the probe waiting for nothing.
            let answer = loop {
                tokio::select! {
                    answer = &mut probe => break Some(answer),
                    () = tokio::time::sleep(READY_POLL) => {
                        if !matches!(postmaster.try_wait(), Ok(None)) {
                            break None;
                        }
                    }
                }
            };
            match answer {
                Some(Ok(dir)) if Path::new(&dir) == layout.data => return Ok(()),
                Some(Ok(dir)) => {
                    return Err(fail(
                        true,
                        anyhow!("port {port} is served by another cluster ({dir})"),
                    ));
                }
                Some(Err(e)) => last_probe = Some(e),
                None => continue,
            }
        }
        if Instant::now() >= deadline {
            let probe = last_probe.map_or_else(String::new, |e| format!(" ({e:#})"));
            return Err(fail(
                false,
                anyhow!(
                    "postgres did not accept connections on port {port} within \
                     {READY_TIMEOUT:?}{probe}; last lines of {}:\n{}",
                    layout.log.display(),
                    log_tail(&layout.log, log_offset)
                ),
            ));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(could not read the log: {e})");
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

async fn psql(bins: &PgBins, port: u16, user: &str, db: &str, sql: &str) -> Result<String> {
    psql_within(PSQL_TIMEOUT, bins, port, user, db, sql).await
}

async fn psql_within(
    timeout: Duration,
    bins: &PgBins,
    port: u16,
    user: &str,
    db: &str,
    sql: &str,
) -> Result<String> {
    let mut cmd = Command::from(base_command(&bins.psql, None));
    cmd.args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            LISTEN_HOST,
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-c", sql])
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| anyhow!("psql took longer than {timeout:?}"))?
        .with_context(|| format!("running {}", bins.psql.display()))?;
    if !out.status.success() {
        bail!(
            "psql as {user} on database {db} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Blocking: fast shutdown, then immediate shutdown, then SIGKILL. Signalling the postmaster
/// alone is right, since it stops its own children; SIGKILL would orphan them, hence last.
fn shut_down(postmaster: &mut Child) -> io::Result<ExitStatus> {
    let pid = Pid::from_raw(i32::try_from(postmaster.id()).map_err(io::Error::other)?);
    for (signal, grace) in [
        (Signal::SIGINT, FAST_SHUTDOWN_GRACE),
        (Signal::SIGQUIT, IMMEDIATE_SHUTDOWN_GRACE),
    ] {
        if let Some(status) = postmaster.try_wait()? {
            return Ok(status);
        }
        // A not-yet-reaped child keeps its pid, so this cannot hit an unrelated process.
        let _ = kill(pid, signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = postmaster.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(EXIT_POLL);
        }
        tracing::warn!(%pid, ?signal, "postgres has not exited yet; escalating");
    }
    postmaster.kill()?;
    postmaster.wait()
}

fn check_identifier(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || name.contains('\0') {
        bail!("{name:?} is not a usable database name (1 to {MAX_IDENTIFIER_BYTES} bytes, no NUL)");
    }
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Valid because standard_conforming_strings is on, as it has been by default since 9.1.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// FNV-1a, chosen because its output must stay the same across builds and Rust releases
/// (std's hashers promise neither) for a fallback directory to be found again.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "pgcluster-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_binary(dir: &Path, name: &str, contents: &[u8]) {
        fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn fake_installation(dir: &Path) {
        for name in REQUIRED_BINARIES {
            fake_binary(dir, name, b"\x7fELF fake");
        }
    }

    #[test]
    fn missing_binaries_error_is_one_actionable_paragraph() {
        let empty = Scratch::new("empty");
        let err = discover(
            std::slice::from_ref(&empty.0),
            std::slice::from_ref(&empty.0),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains('\n'), "{err}");
        for needle in [
            "PATH",
            "/usr/lib/postgresql/*/bin",
            "apt-get install postgresql",
            "DATABASE_URL",
            "CHAT_ENGINE_DATABASE_URL",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
    }

    #[test]
    fn wrapper_scripts_do_not_count_as_binaries() {
        let scratch = Scratch::new("wrapper");
        for name in REQUIRED_BINARIES {
            fake_binary(&scratch.0, name, b"#!/usr/bin/perl\n");
        }
        assert!(discover(std::slice::from_ref(&scratch.0), &[]).is_err());
    }

    #[test]
    fn path_wins_over_lib_root_and_versions_sort_numerically() {
        let scratch = Scratch::new("versions");
        let lib = scratch.0.join("lib");
        for version in ["9.6", "15", "16"] {
            fake_installation(&lib.join(version).join("bin"));
        }
        fs::create_dir_all(lib.join("README")).unwrap();
        let found = discover(&[], std::slice::from_ref(&lib)).unwrap();
        let order: Vec<_> = found.iter().map(|b| b.postgres.clone()).collect();
        assert_eq!(
            order,
            ["16", "15", "9.6"].map(|v| lib.join(v).join("bin/postgres"))
        );

        // A symlink on PATH leads to the directory it points into, as Debian's
        // /usr/local/bin links do.
        let real = scratch.0.join("opt/pg/bin");
        fake_installation(&real);
        let on_path = scratch.0.join("path");
        fs::create_dir_all(&on_path).unwrap();
        std::os::unix::fs::symlink(real.join("postgres"), on_path.join("postgres")).unwrap();
        let found = discover(std::slice::from_ref(&on_path), std::slice::from_ref(&lib)).unwrap();
        let real = fs::canonicalize(&real).unwrap();
        assert_eq!(found[0].psql, real.join("psql"));
        assert_eq!(found.len(), 4);
    }

    #[test]
    fn major_versions_match_pg_version_files() {
        let v = |s| major_version(s);
        assert_eq!(
            v("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n").as_deref(),
            Some("15")
        );
        assert_eq!(v("postgres (PostgreSQL) 9.6.24\n").as_deref(), Some("9.6"));
        assert_eq!(v("postgres (PostgreSQL) 17devel").as_deref(), Some("17"));
        assert_eq!(v("garbage"), None);
    }

    #[test]
    fn quoting_and_urls() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(percent_encode("chat_engine-1.x~"), "chat_engine-1.x~");
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
        assert!(check_identifier("").is_err());
        assert!(check_identifier(&"x".repeat(64)).is_err());
        assert!(check_identifier(&"x".repeat(63)).is_ok());
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn private_directories_are_judged_by_the_target_account() {
        let scratch = Scratch::new("reach");
        let run_as = RunAs {
            uid: Uid::from_raw(54_321),
            gid: Gid::from_raw(54_321),
            name: "nobody-in-particular".into(),
            home: PathBuf::from("/"),
        };
        let closed = scratch.0.join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let open = scratch.0.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o711)).unwrap();
        let owner_is_us = fs::metadata(&closed).unwrap().uid() == 54_321;
        assert!(owner_is_us || !run_as.can_reach(&closed.join("pg")));
        assert!(run_as.can_reach(&open.join("pg")));
    }

    /// Starts a real cluster: create, reuse, stale lock file, live-postmaster refusal.
    /// One test so that initdb (the slow part) runs once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_cluster_lifecycle() {
        let scratch = Scratch::new("cluster");
        let requested = scratch.0.join("pg");

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
            &cluster.bins,
            cluster.port,
            SUPERUSER,
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'lifecycle'",
        )
        .await
        .unwrap();
        assert_eq!(owner, SUPERUSER);

        // A second start on a live data directory must refuse rather than fight for it.
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
        assert!(failure.port_taken, "{:#}", failure.error);
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
