//! Where a cluster's files go and whom its processes run as: the data directory (created,
//! handed to the right account, restricted to 0700), the unix socket directory, the server
//! log, and, when running as root, the `postgres` account and the /tmp fallback for a data
//! directory that account cannot reach.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::unistd::{Gid, Uid, User};

use super::lockfile;

const TMP_PREFIX: &str = "/tmp/chat-engine-pg-";
/// `sizeof(sockaddr_un.sun_path)` on Linux less the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// The longest socket file name postgres puts in `unix_socket_directories`.
const SOCKET_FILE_MAX: &str = "/.s.PGSQL.65535";

/// Account the server processes run as when we are root, since postgres refuses root.
#[derive(Debug, Clone)]
pub(super) struct RunAs {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) name: String,
    pub(super) home: PathBuf,
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
pub(super) struct Layout {
    pub(super) data: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) log: PathBuf,
    /// Names the process that started the running postmaster; see [`lockfile`].
    pub(super) owner: PathBuf,
    pub(super) run_as: Option<RunAs>,
    /// Contents of PG_VERSION, or `None` when initdb still has to run.
    pub(super) cluster_version: Option<String>,
}

impl Layout {
    /// Blocking: may wait for a postmaster an earlier run left behind to shut down.
    pub(super) fn prepare(requested: &Path) -> Result<Layout> {
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
            Self::beside(requested, &parent, None)
        };
        layout.cluster_version = prepare_data_dir(&layout.data, layout.run_as.as_ref())?;
        layout.socket_dir = socket_dir_for(&layout.data, layout.run_as.as_ref())?;
        if layout.cluster_version.is_some() {
            lockfile::clear_stale_state(&layout)?;
        }
        Ok(layout)
    }

    /// The data directory `data` with its log and owner record next to it, in `parent`.
    fn beside(data: PathBuf, parent: &Path, run_as: Option<RunAs>) -> Layout {
        let mut owner = data.as_os_str().to_owned();
        owner.push(".owner");
        Layout {
            data,
            socket_dir: PathBuf::new(),
            log: parent.join("postgres.log"),
            owner: PathBuf::from(owner),
            run_as,
            cluster_version: None,
        }
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
            return Ok(Self::beside(requested.to_path_buf(), parent, Some(run_as)));
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
        Ok(Self::beside(base.join("data"), &base, Some(run_as)))
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

    #[test]
    fn fallback_names_are_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn private_directories_are_judged_by_the_target_account() {
        let scratch = tempfile::tempdir().unwrap();
        let run_as = RunAs {
            uid: Uid::from_raw(54_321),
            gid: Gid::from_raw(54_321),
            name: "nobody-in-particular".into(),
            home: PathBuf::from("/"),
        };
        // The scratch directory itself is 0700; what matters is what lies below it.
        fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let closed = scratch.path().join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let open = scratch.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o711)).unwrap();
        let owner_is_us = fs::metadata(&closed).unwrap().uid() == 54_321;
        assert!(owner_is_us || !run_as.can_reach(&closed.join("pg")));
        assert!(run_as.can_reach(&open.join("pg")));
    }
}
