//! The postmaster's lock file (`postmaster.pid`) and what a start does about the server it
//! names.
//!
//! Every postmaster this module's cluster starts is recorded in an owner file beside the data
//! directory: "<pid of the process that started it> <postmaster pid>". A live postmaster of
//! this data directory whose parent is no longer the process that started it has been
//! orphaned: its owner died without stopping it (say, by `kill -9` before the parent-death
//! signal existed, or while it was ignored). Such a server serves nobody, so a start stops it
//! cleanly and goes on. A live postmaster whose owner still runs it, or one this code did not
//! start, is left alone and the start refuses.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::layout::Layout;
use super::postmaster::{EXIT_POLL, FAST_SHUTDOWN_GRACE, IMMEDIATE_SHUTDOWN_GRACE};

/// After SIGKILL the kernel needs a moment; longer means something is badly wrong.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Writes the owner record for a postmaster this process just started.
pub(super) fn record_owner(layout: &Layout, postmaster_pid: u32) -> Result<()> {
    let record = format!("{} {postmaster_pid}\n", std::process::id());
    fs::write(&layout.owner, record).with_context(|| format!("writing {}", layout.owner.display()))
}

/// Who holds the pid that `postmaster.pid` names.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    /// No process: PostgreSQL's own start-up check takes over (it also makes sure no old
    /// server process still uses the shared memory).
    Exited,
    /// A zombie or a process that is not a postmaster of this data directory (after a reboot
    /// or in a new container the pid is reused); PostgreSQL would take it for a live server.
    Unrelated,
    /// A live postmaster of this data directory, still run by the process that started it.
    Owned { owner: i32 },
    /// A live postmaster of this data directory whose starter is gone.
    Orphaned { owner: i32 },
    /// A live postmaster of this data directory that this code did not start.
    Foreign,
}

/// Removes or stops what an earlier run left behind, and refuses to touch a server that is
/// still somebody's. Blocking: stopping an orphan waits for it to exit.
pub(super) fn clear_stale_state(layout: &Layout) -> Result<()> {
    let data = &layout.data;
    let pid_file = data.join("postmaster.pid");
    match fs::read_to_string(&pid_file) {
        Ok(contents) => {
            let pid = contents.lines().next().and_then(|l| l.trim().parse().ok());
            match pid.map(|pid| (pid, holder(pid, layout))) {
                Some((_, Holder::Exited)) => {}
                Some((pid, Holder::Owned { owner })) => bail!(
                    "a PostgreSQL server (pid {pid}) is still running on {}, started by process \
                     {owner}, which still runs it; stop that process first",
                    data.display()
                ),
                Some((pid, Holder::Foreign)) => bail!(
                    "a PostgreSQL server (pid {pid}) is still running on {}, not started by \
                     chat-engine; stop it with `kill -INT {pid}` and start again",
                    data.display()
                ),
                Some((pid, Holder::Orphaned { owner })) => {
                    tracing::warn!(
                        pid,
                        owner,
                        data_dir = %data.display(),
                        "a PostgreSQL server of this data directory outlived the process that \
                         started it; stopping it"
                    );
                    stop_orphan(pid)?;
                    tracing::info!(pid, "the orphaned PostgreSQL server has exited");
                }
                Some((_, Holder::Unrelated)) | None => {
                    tracing::info!(
                        pid_file = %pid_file.display(),
                        "removing the lock file of a postmaster that is no longer running"
                    );
                    fs::remove_file(&pid_file)
                        .with_context(|| format!("removing {}", pid_file.display()))?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", pid_file.display())),
    }
    // Each start picks a new port, so a crash's socket files would otherwise pile up.
    for entry in fs::read_dir(&layout.socket_dir)?.flatten() {
        if entry.file_name().as_bytes().starts_with(b".s.PGSQL.") {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn holder(pid: i32, layout: &Layout) -> Holder {
    if pid <= 0 {
        return Holder::Unrelated;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return Holder::Exited,
    }
    let stat = proc_stat(pid);
    if stat.is_some_and(|s| s.zombie) {
        return Holder::Unrelated;
    }
    // The postmaster's working directory is its data directory; /proc hides it from other
    // non-root accounts, in which case the process name is the best evidence left.
    let ours = match fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => fs::canonicalize(&layout.data).is_ok_and(|data| data == cwd),
        Err(_) => match fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(comm) => matches!(comm.trim(), "postgres" | "postmaster"),
            Err(_) => true,
        },
    };
    if !ours {
        return Holder::Unrelated;
    }
    let owner = fs::read_to_string(&layout.owner)
        .ok()
        .and_then(|record| parse_owner(&record))
        .and_then(|(owner, postmaster)| (postmaster == pid).then_some(owner));
    match (owner, stat) {
        (Some(owner), Some(stat)) if stat.ppid == owner => Holder::Owned { owner },
        (Some(owner), Some(_)) => Holder::Orphaned { owner },
        // Without /proc there is no telling who its parent is; leave it be.
        (Some(owner), None) => Holder::Owned { owner },
        (None, _) => Holder::Foreign,
    }
}

/// Fast shutdown, then immediate shutdown, then SIGKILL, as for a child of our own; but the
/// orphan is not our child, so its exit shows as its pid going away (or turning zombie, when
/// whoever inherited it is slow to reap).
fn stop_orphan(pid: i32) -> Result<()> {
    let target = Pid::from_raw(pid);
    for (signal, grace) in [
        (Signal::SIGINT, FAST_SHUTDOWN_GRACE),
        (Signal::SIGQUIT, IMMEDIATE_SHUTDOWN_GRACE),
        (Signal::SIGKILL, KILL_GRACE),
    ] {
        if gone(pid) {
            return Ok(());
        }
        match kill(target, signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("sending {signal:?} to postgres (pid {pid})"));
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if gone(pid) {
                return Ok(());
            }
            std::thread::sleep(EXIT_POLL);
        }
        tracing::warn!(
            pid,
            ?signal,
            "the orphaned postgres has not exited yet; escalating"
        );
    }
    bail!("the orphaned PostgreSQL server (pid {pid}) did not exit, even after SIGKILL")
}

fn gone(pid: i32) -> bool {
    matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
        || proc_stat(pid).is_some_and(|s| s.zombie)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    ppid: i32,
}

fn proc_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/<pid>/stat` is "pid (comm) state ppid ...", where comm may itself hold spaces and
/// parentheses, so the fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat {
        zombie: matches!(state, "Z" | "X" | "x"),
        ppid,
    })
}

fn parse_owner(record: &str) -> Option<(i32, i32)> {
    let mut parts = record.split_whitespace().map(str::parse);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(owner)), Some(Ok(postmaster)), None) => Some((owner, postmaster)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_process_names() {
        assert_eq!(
            parse_stat("4242 (postgres) S 17 4242 4242 0 -1 4194560 1 0"),
            Some(Stat {
                zombie: false,
                ppid: 17
            })
        );
        assert_eq!(
            parse_stat("7 (a) b (c) Z 1 7 7"),
            Some(Stat {
                zombie: true,
                ppid: 1
            })
        );
        assert_eq!(parse_stat("7 (truncated"), None);
        assert_eq!(parse_stat("7 (x) S notanumber"), None);
    }

    #[test]
    fn owner_records_parse_strictly() {
        assert_eq!(parse_owner("12 345\n"), Some((12, 345)));
        assert_eq!(parse_owner("12"), None);
        assert_eq!(parse_owner("12 345 6"), None);
        assert_eq!(parse_owner("x 345"), None);
    }

    #[test]
    fn this_process_is_alive_and_not_a_zombie() {
        let me = proc_stat(std::process::id() as i32).expect("/proc is mounted");
        assert!(!me.zombie);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(!gone(std::process::id() as i32));
    }
}
