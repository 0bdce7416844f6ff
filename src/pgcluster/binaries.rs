//! Finding one PostgreSQL installation's server binaries (on PATH or under
//! /usr/lib/postgresql/*/bin), matching them to an existing cluster's version, and the clean
//! environment every one of them runs in.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use super::layout::RunAs;

pub(super) const LIB_ROOT: &str = "/usr/lib/postgresql";
pub(super) const REQUIRED_BINARIES: [&str; 3] = ["initdb", "postgres", "psql"];

const NOT_FOUND: &str = "no PostgreSQL server binaries were found on PATH or under \
/usr/lib/postgresql/*/bin (needed: initdb, postgres and psql from one installation, not \
Debian's pg_wrapper scripts); on Debian/Ubuntu `apt-get install postgresql` provides them, or \
set DATABASE_URL (CHAT_ENGINE_DATABASE_URL) to use an existing PostgreSQL server instead of a \
private one";

/// One installation's binaries, all from the same directory so their versions agree.
#[derive(Debug, Clone)]
pub(super) struct PgBins {
    pub(super) initdb: PathBuf,
    pub(super) postgres: PathBuf,
    pub(super) psql: PathBuf,
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

pub(super) fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Candidate installations, best first: the one whose `postgres` is found on `path_dirs`
/// (followed through symlinks to its real directory), then `<lib root>/<version>/bin`,
/// highest version first.
pub(super) fn discover(path_dirs: &[PathBuf], lib_roots: &[PathBuf]) -> Result<Vec<PgBins>> {
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
pub(super) async fn matching_version(
    candidates: &[PgBins],
    version: &str,
    data: &Path,
) -> Result<PgBins> {
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

/// A command for one of the installation's binaries, run as `run_as` when given.
pub(super) fn base_command(program: &Path, run_as: Option<&RunAs>) -> StdCommand {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
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
        let empty = scratch();
        let empty = empty.path().to_path_buf();
        let err = discover(std::slice::from_ref(&empty), std::slice::from_ref(&empty))
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
        let scratch = scratch();
        for name in REQUIRED_BINARIES {
            fake_binary(scratch.path(), name, b"#!/usr/bin/perl\n");
        }
        assert!(discover(&[scratch.path().to_path_buf()], &[]).is_err());
    }

    #[test]
    fn path_wins_over_lib_root_and_versions_sort_numerically() {
        let scratch = scratch();
        let lib = scratch.path().join("lib");
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
        let real = scratch.path().join("opt/pg/bin");
        fake_installation(&real);
        let on_path = scratch.path().join("path");
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
}
