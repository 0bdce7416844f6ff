//! Where the load goes: an external server named by `--target` (loopback only) or one started
//! in this process over a private PostgreSQL cluster, and whose resident memory is reported.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::client::{setup, short_id};
use super::{Args, Mode, idle, messages, routing};
use crate::app;
use crate::config::{Config, RateLimits, Secret};

/// Where the load goes and how to measure its memory.
pub(super) struct Target {
    pub(super) url: String,
    pub(super) operator_token: String,
    pub(super) rss: RssSource,
    pub(super) description: String,
}

/// Whose resident memory is reported.
#[derive(Clone, Copy, Debug)]
pub(super) enum RssSource {
    /// This process: the in-process server and the load generator together.
    Process,
    /// An external server.
    Pid(u32),
    /// Not measured.
    Unknown,
}

impl RssSource {
    pub(super) fn read(self) -> anyhow::Result<Option<u64>> {
        let path = match self {
            RssSource::Process => "/proc/self/status".to_owned(),
            RssSource::Pid(pid) => format!("/proc/{pid}/status"),
            RssSource::Unknown => return Ok(None),
        };
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        vm_rss_kib(&status)
            .map(Some)
            .ok_or_else(|| anyhow!("{path} has no VmRSS line"))
    }

    /// Reads, reporting a failure as unknown (a process may exit while we measure).
    pub(super) fn sample(self) -> Option<u64> {
        self.read().unwrap_or_else(|e| {
            eprintln!("loadtest: {e:#}");
            None
        })
    }

    pub(super) fn name(self) -> Option<&'static str> {
        match self {
            RssSource::Process => Some("process"),
            RssSource::Pid(_) => Some("server_pid"),
            RssSource::Unknown => None,
        }
    }

    pub(super) fn describe(self) -> String {
        match self {
            RssSource::Process => "of this process, which holds both the server and the load \
                                   generator (use --target/--server-pid to measure a server \
                                   alone)"
                .to_owned(),
            RssSource::Pid(pid) => format!("of server process {pid}"),
            RssSource::Unknown => "not measured (pass --server-pid)".to_owned(),
        }
    }
}

/// The `VmRSS` figure of a `/proc/<pid>/status` text, in KiB.
pub(super) fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Accepts `http://` URLs whose host is a loopback address; returns `http://host:port`.
pub(super) fn loopback_url(raw: &str) -> anyhow::Result<String> {
    let uri: http::Uri = raw
        .parse()
        .with_context(|| format!("--target {raw:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--target must be an http:// URL (the load generator speaks plaintext gRPC)");
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        bail!("--target {raw:?} names no host");
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--target must be on this machine (127.0.0.1, ::1 or localhost), not {host}");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--target takes no path: http://HOST:PORT");
    }
    Ok(format!("http://{authority}"))
}

/// Ends `fut` early on Ctrl-C, so the caller can still clean up.
pub(super) async fn with_interrupt(
    fut: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::select! {
        r = fut => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    }
}

/// Starts a server in this process (over a private cluster in a temporary directory unless a
/// database is configured), drives it, and tears everything down again.
pub(super) async fn in_process(args: &Args, mut cfg: Config) -> anyhow::Result<()> {
    let max = cfg.max_concurrent_streams;
    if matches!(args.mode, Mode::Idle | Mode::Routing) && args.streams_per_connection > max as usize
    {
        bail!(
            "--streams-per-connection must not exceed the server's max_concurrent_streams ({max})"
        );
    }
    let temp = match &args.data_dir {
        Some(dir) => {
            cfg.data_dir = dir.clone();
            None
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("chat-engine-loadtest-")
                .tempdir()
                .context("creating a temporary data directory")?;
            cfg.data_dir = dir.path().to_path_buf();
            Some(dir)
        }
    };
    let token = format!("op-{}{}", short_id(), uuid::Uuid::new_v4().simple());
    cfg.operator_token = Some(Secret::new(token.clone()));
    cfg.shutdown_grace_secs = cfg.shutdown_grace_secs.min(5);
    let outcome = with_database(args, &cfg, token).await;
    if let Some(dir) = temp {
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.close() {
            eprintln!("loadtest: could not remove {}: {e}", path.display());
        }
    }
    outcome
}

pub(super) async fn with_database(args: &Args, cfg: &Config, token: String) -> anyhow::Result<()> {
    let mut db = app::open_database(cfg).await?;
    let where_ = match &db.cluster {
        Some(c) => format!("private PostgreSQL under {}", c.data_dir().display()),
        None => {
            eprintln!("loadtest: using the configured database; the load test tenant stays in it");
            "the configured database".to_owned()
        }
    };
    let outcome = if args.mode == Mode::Analytics {
        super::analytics::run(args, cfg, &db, where_).await
    } else {
        serve_and_drive(args, cfg, &db, token, where_).await
    };
    if let Some(cluster) = db.cluster.take() {
        let dir = cluster.data_dir().to_path_buf();
        if let Err(e) = cluster.stop().await {
            eprintln!("loadtest: stopping PostgreSQL: {e:#}");
        }
        // Running as root may have moved the cluster out of a fresh temporary data dir.
        if args.data_dir.is_none()
            && !dir.starts_with(&cfg.data_dir)
            && dir.starts_with("/tmp")
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("chat-engine-pg-"))
        {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    outcome
}

pub(super) async fn serve_and_drive(
    args: &Args,
    cfg: &Config,
    db: &app::Database,
    operator_token: String,
    where_: String,
) -> anyhow::Result<()> {
    // All the load comes from one address: the server it measures must not limit it.
    let cfg = &Config {
        rate_limits: RateLimits::off(),
        ..cfg.clone()
    };
    crate::memory::purge_at_once();
    let node = app::build(cfg, db).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_cfg = cfg.clone();
    let server = tokio::spawn(async move {
        app::serve(&server_cfg, node, listener, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let target = Target {
        url: format!("http://{addr}"),
        operator_token,
        rss: RssSource::Process,
        description: format!(
            "in-process server on {addr} over {where_} (db_pool_size {})",
            cfg.db_pool_size
        ),
    };
    let outcome = with_interrupt(drive(args, &target)).await;
    let _ = stop_tx.send(());
    let grace = Duration::from_secs(cfg.shutdown_grace_secs) + Duration::from_secs(5);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("loadtest: server ended with an error: {e:#}"),
        Ok(Err(e)) => eprintln!("loadtest: server task failed: {e}"),
        Err(_) => eprintln!("loadtest: server did not stop within {grace:?}"),
    }
    outcome
}

/// Sets up, runs the mode and prints the report.
pub(super) async fn drive(args: &Args, target: &Target) -> anyhow::Result<()> {
    // Stops every task this run spawned, however it ends.
    let cancel = CancellationToken::new();
    let _stop_tasks = cancel.clone().drop_guard();
    let fx = setup(args, target).await?;
    let report = match args.mode {
        Mode::Messages => messages::run(args, target, &fx, &cancel).await?,
        Mode::Idle => idle::run(args, target, &fx, &cancel).await?,
        Mode::Routing => routing::run(args, target, &fx, &cancel).await?,
        Mode::Broadcast => bail!("broadcast mode needs no server"),
        Mode::Analytics => bail!("analytics mode drives no server"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Resident memory once freed heap has gone back to the kernel, so memory freed earlier
/// (argon2 uses 19 MiB per hash during setup) is neither counted as in use nor silently
/// reused by what is measured and hidden from the difference. A server process trims on its
/// own every [`crate::memory::TRIM_EVERY`]; this one trims now.
pub(super) async fn settled_rss(rss: RssSource) -> Option<u64> {
    match rss {
        RssSource::Process => crate::memory::release_free_heap(),
        RssSource::Pid(_) => {
            tokio::time::sleep(crate::memory::TRIM_EVERY + Duration::from_secs(1)).await;
        }
        RssSource::Unknown => {}
    }
    rss.sample()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let s = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t   1234 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_kib(s), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn accepts_only_loopback_targets() {
        assert_eq!(
            loopback_url("http://127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert!(loopback_url("http://localhost:1/").is_ok());
        assert!(loopback_url("http://[::1]:1").is_ok());
        assert!(loopback_url("http://10.0.0.1:50051").is_err());
        assert!(loopback_url("https://127.0.0.1:50051").is_err());
        assert!(loopback_url("http://example.com:50051").is_err());
        assert!(loopback_url("http://127.0.0.1:1/x").is_err());
        assert!(loopback_url("not a url").is_err());
    }
}
