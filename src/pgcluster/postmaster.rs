//! The postmaster as a child process: initdb, the server's command line and log, spawning
//! it (from a thread that never exits when it must die with this process), waiting until it
//! is ready, and shutting it down.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command as StdCommand, ExitStatus};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::oneshot;

use super::binaries::{PgBins, base_command};
use super::layout::Layout;
use super::psql::psql;
use super::{LISTEN_HOST, SUPERUSER};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(25);
pub(super) const FAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub(super) const IMMEDIATE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
pub(super) const EXIT_POLL: Duration = Duration::from_millis(10);
/// Short, because whatever answers on the port may not be postgres and may never reply.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const INITDB_TIMEOUT: Duration = Duration::from_secs(300);
const LOG_ROTATE_BYTES: u64 = 16 << 20;
const LOG_TAIL_LINES: usize = 40;

pub(super) async fn initdb(bins: &PgBins, layout: &Layout) -> Result<()> {
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
pub(super) fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((LISTEN_HOST, 0)).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Opens the server log for appending and returns where this run's output begins.
pub(super) fn open_log(path: &Path) -> Result<(File, u64)> {
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

pub(super) fn postgres_command(
    bins: &PgBins,
    layout: &Layout,
    port: u16,
    log: File,
) -> Result<StdCommand> {
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
        // A new database's tables grow from nothing; until they are analyzed, every pooled
        // connection keeps the generic plans it prepared while they were tiny (sequential
        // scans for key lookups, joins that filter every row pair), and an ANALYZE is what
        // makes it plan again. The default naptime (1 min) left a new database's first minute
        // at about two thirds of the speed (BENCHMARKS, session 14).
        .args(["-c", "autovacuum_naptime=5s"])
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log)
        // A terminal's Ctrl-C goes to the whole foreground group; the server must outlive it
        // so that the application can drain its connections and then stop the cluster.
        .process_group(0);
    Ok(cmd)
}

pub(super) async fn spawn(mut command: StdCommand, parent_death_signal: bool) -> io::Result<Child> {
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
/// when the whole process goes away (Linux sends it when the forking *thread* exits).
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

/// What a start can do about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Nothing: report the error.
    No,
    /// Another server holds the port.
    PortTaken,
    /// Processes of a server that died are still attached to its shared memory; they notice
    /// their postmaster is gone and exit shortly.
    Later,
}

pub(super) struct StartFailure {
    pub(super) retry: Retry,
    pub(super) error: anyhow::Error,
}

pub(super) async fn wait_ready(
    bins: &PgBins,
    layout: &Layout,
    port: u16,
    postmaster: &mut Child,
    log_offset: u64,
) -> Result<(), StartFailure> {
    let fail = |retry, error| StartFailure { retry, error };
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_probe: Option<anyhow::Error> = None;
    loop {
        match postmaster.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let tail = log_tail(&layout.log, log_offset);
                let retry = if tail.contains("could not bind")
                    || tail.contains("could not create any TCP/IP sockets")
                {
                    Retry::PortTaken
                } else if tail.contains("pre-existing shared memory block") {
                    Retry::Later
                } else {
                    Retry::No
                };
                return Err(fail(
                    retry,
                    anyhow!(
                        "postgres exited during start-up ({status}); last lines of {}:\n{tail}",
                        layout.log.display()
                    ),
                ));
            }
            Err(e) => return Err(fail(Retry::No, anyhow!(e).context("waiting for postgres"))),
        }
        if tokio::net::TcpStream::connect((LISTEN_HOST, port))
            .await
            .is_ok()
        {
            // Asking for the data directory proves the answer came from our server and not
            // from another cluster that grabbed the port between our probe and its bind.
            let probe = psql(
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
                        Retry::PortTaken,
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
                Retry::No,
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

/// Blocking: fast shutdown, then immediate shutdown, then SIGKILL. Signalling the postmaster
/// alone is right, since it stops its own children; SIGKILL would orphan them, hence last.
pub(super) fn shut_down(postmaster: &mut Child) -> io::Result<ExitStatus> {
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
