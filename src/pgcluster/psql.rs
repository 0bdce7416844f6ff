//! Talking SQL to the cluster through its own `psql`: the application role, databases, and
//! the quoting that building those statements needs.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::Command;

use super::binaries::{PgBins, base_command};
use super::{APP_ROLE, LISTEN_HOST, PrivateCluster, SUPERUSER};

pub(super) const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
/// NAMEDATALEN - 1: postgres silently truncates longer names, which would make URLs lie.
const MAX_IDENTIFIER_BYTES: usize = 63;

impl PrivateCluster {
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

    async fn admin_sql(&self, sql: &str) -> Result<String> {
        psql(
            PSQL_TIMEOUT,
            &self.bins,
            self.port,
            SUPERUSER,
            "postgres",
            sql,
        )
        .await
    }
}

/// Runs `sql` as `user` on database `db` and returns its unaligned, tuples-only output.
pub(super) async fn psql(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_identifiers() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(check_identifier("").is_err());
        assert!(check_identifier(&"x".repeat(64)).is_err());
        assert!(check_identifier(&"x".repeat(63)).is_ok());
    }
}
