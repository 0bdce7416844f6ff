//! The private PostgreSQL of `chat-engine serve` through the real binary (killed servers,
//! killed and orphaned postmasters), and health while a database is down.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_engine_client::pb;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{Options, TestApp, bearer, own_cluster};
use crate::server::health_of_every_service;

/// A guard against a broken start hanging the suite (initdb included); not a timing goal.
const START_BOUND: Duration = Duration::from_secs(120);
/// A guard for recoveries and state changes that should take a second or two.
const CHANGE_BOUND: Duration = Duration::from_secs(30);
const OPERATOR_TOKEN: &str = "cluster-test-operator-token";
const PASSWORD: &str = "admin-password-123";

/// Tells the helper test where to put the cluster it abandons.
const HELPER_DIR_ENV: &str = "CHAT_ENGINE_TEST_ABANDONED_CLUSTER_DIR";

/// A data directory the `postgres` account can reach when tests run as root (a 0700 one
/// would make the cluster move to /tmp and outlive the directory).
fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("chat-engine-cluster-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("temp dir")
}

/// `chat-engine serve` as a child process with no DATABASE_URL, so with its private cluster
/// under `dir/pg`; its log goes to a file of its own.
struct Server {
    proc: std::process::Child,
    addr: String,
    log: PathBuf,
}

impl Server {
    async fn start(dir: &Path, name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{name}.log"));
        let proc = Command::new(env!("CARGO_BIN_EXE_chat-engine"))
            .args(["serve", "--listen", &addr])
            .env_remove("DATABASE_URL")
            .env_remove("CHAT_ENGINE_DATABASE_URL")
            .env_remove("CHAT_ENGINE_MIGRATION_DATABASE_URL")
            .env_remove("CHAT_ENGINE_CONFIG")
            .env("CHAT_ENGINE_DATA_DIR", dir)
            .env("CHAT_ENGINE_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting chat-engine");
        let mut server = Self { proc, addr, log };
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = server.proc.try_wait().unwrap() {
                panic!("chat-engine exited ({status}):\n{}", server.log());
            }
            if let Ok(ch) = server.try_channel().await
                && overall_health(&ch).await == Ok(ServingStatus::Serving)
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "chat-engine did not serve within {START_BOUND:?}:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_channel(&self) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
    }

    async fn channel(&self) -> Channel {
        self.try_channel().await.expect("connecting to chat-engine")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn overall_health(ch: &Channel) -> Result<ServingStatus, Code> {
    HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

/// Creates tenant `slug` with an admin through the operator API.
async fn create_tenant(ch: &Channel, slug: &str) {
    pb::admin::tenant_service_client::TenantServiceClient::new(ch.clone())
        .create_tenant(bearer(
            pb::admin::CreateTenantRequest {
                time_zone: Default::default(),
                name: format!("Tenant {slug}"),
                slug: slug.into(),
                widget: None,
                initial_admin: Some(pb::admin::InitialAdmin {
                    email: format!("admin@{slug}.example"),
                    display_name: "Admin".into(),
                    password: PASSWORD.into(),
                }),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("creating a tenant");
}

async fn login(ch: &Channel, slug: &str) -> Result<pb::LoginResponse, tonic::Status> {
    pb::auth_service_client::AuthServiceClient::new(ch.clone())
        .login(pb::LoginRequest {
            tenant_slug: slug.into(),
            email: format!("admin@{slug}.example"),
            password: PASSWORD.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The pid `postmaster.pid` of the cluster under `dir/pg` names, if there is one.
fn postmaster_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("pg/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live process (a zombie has exited).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z" | "X") | None)
    })
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + CHANGE_BOUND;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {CHANGE_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_takes_its_postgres_along_and_starts_again_on_its_data() {
    let dir = data_dir();
    let mut first = Server::start(dir.path(), "first").await;
    create_tenant(&first.channel().await, "kept").await;
    let postmaster = postmaster_pid(dir.path()).expect("a running postmaster");
    assert!(running(postmaster));
    let _stray = Stray {
        pid: postmaster,
        dir: dir.path(),
    };

    first.kill();
    // Nothing ran in the server on its way out: the postmaster ends because its parent did.
    wait_until("the killed server's postmaster exits", async || {
        !running(postmaster)
    })
    .await;

    let second = Server::start(dir.path(), "second").await;
    let ch = second.channel().await;
    login(&ch, "kept")
        .await
        .expect("the tenant made before the kill logs in");
    assert_ne!(postmaster_pid(dir.path()), Some(postmaster));
}

/// Not a test: the helper process of the next one. It starts a cluster the way a build
/// without the parent-death signal did, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_start_stops_a_postmaster_an_earlier_run_left_behind"]
async fn abandon_a_cluster() {
    let Some(dir) = std::env::var_os(HELPER_DIR_ENV) else {
        return;
    };
    let cluster =
        chat_engine::pgcluster::PrivateCluster::start(Path::new(&dir).join("pg").as_path())
            .await
            .expect("starting the cluster to abandon");
    println!("abandoned-cluster-ready");
    std::future::pending::<()>().await;
    drop(cluster);
}

/// Stops, on drop, a postmaster of `dir/pg` that a failing test would otherwise leave
/// running. Declared after `dir`, so that it drops first.
struct Stray<'a> {
    pid: i32,
    dir: &'a Path,
}

impl Drop for Stray<'_> {
    fn drop(&mut self) {
        // The pid may have been reused since; only a process working in that data
        // directory is the one meant.
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", self.pid));
        let data = std::fs::canonicalize(self.dir.join("pg"));
        if running(self.pid) && matches!((cwd, data), (Ok(c), Ok(d)) if c == d) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_stops_a_postmaster_an_earlier_run_left_behind() {
    let dir = data_dir();
    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "cluster::abandon_a_cluster",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the helper");
    let stdout = helper.stdout.take().expect("helper stdout");
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "abandoned-cluster-ready")
    });
    let ready = tokio::time::timeout(START_BOUND, ready).await;
    let pid = postmaster_pid(dir.path());
    let _ = helper.kill();
    let _ = helper.wait();
    assert!(
        matches!(ready, Ok(Ok(true))),
        "the helper never started its cluster"
    );
    let orphan = Stray {
        pid: pid.expect("the helper's postmaster"),
        dir: dir.path(),
    };
    // The helper is gone and nothing told its postmaster: it keeps running, orphaned.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        running(orphan.pid),
        "the abandoned postmaster is not running"
    );

    let server = Server::start(dir.path(), "server").await;
    let ch = server.channel().await;
    create_tenant(&ch, "after").await;
    login(&ch, "after").await.expect("login");
    assert!(!running(orphan.pid), "the abandoned postmaster still runs");
    assert_ne!(postmaster_pid(dir.path()), Some(orphan.pid));
    let log = server.log();
    assert!(
        log.contains("outlived the process that started it"),
        "the log does not say what happened to the old server:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_postgres_that_dies_under_a_running_server_is_restarted() {
    let dir = data_dir();
    let server = Server::start(dir.path(), "server").await;
    let ch = server.channel().await;
    create_tenant(&ch, "survivor").await;
    let postmaster = postmaster_pid(dir.path()).expect("a running postmaster");
    let _stray = Stray {
        pid: postmaster,
        dir: dir.path(),
    };

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postmaster),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killing the postmaster");

    // Calls work again without restarting the server, against a new postmaster.
    wait_until("logins work again", async || {
        login(&ch, "survivor").await.is_ok()
    })
    .await;
    assert!(!running(postmaster));
    assert!(postmaster_pid(dir.path()).is_some_and(|p| p != postmaster && running(p)));
    wait_until("health reports SERVING again", async || {
        overall_health(&ch).await == Ok(ServingStatus::Serving)
    })
    .await;
    let log = server.log();
    assert!(
        log.contains("exited unexpectedly; restarting it") && log.contains("is running again"),
        "the log does not say that PostgreSQL was restarted:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_an_external_database_is_down() {
    let (cluster, _dir, urls) = own_cluster().await;
    let app = TestApp::spawn_with(Options {
        database: Some(urls),
        ..Options::default()
    })
    .await;
    let t = app.tenant("outage").await;
    let email = format!("admin@{}.example", t.slug);
    assert_eq!(
        health_of_every_service(&app.channel).await[""],
        Ok(ServingStatus::Serving)
    );

    let stopped = cluster.stop_for_restart().await.expect("stopping postgres");
    wait_until("health reports NOT_SERVING", async || {
        overall_health(&app.channel).await == Ok(ServingStatus::NotServing)
    })
    .await;
    let during = health_of_every_service(&app.channel).await;
    assert!(
        during.values().all(|s| *s == Ok(ServingStatus::NotServing)),
        "{during:?}"
    );
    let refused = app
        .login(&t.slug, &email, PASSWORD)
        .await
        .expect_err("a login without a database");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    let cluster = stopped.start().await.expect("starting postgres again");
    wait_until("health reports SERVING again", async || {
        overall_health(&app.channel).await == Ok(ServingStatus::Serving)
    })
    .await;
    let after = health_of_every_service(&app.channel).await;
    assert_eq!(
        after["chatengine.v1.AuthService"],
        Ok(ServingStatus::Serving),
        "{after:?}"
    );
    app.login(&t.slug, &email, PASSWORD)
        .await
        .expect("logins work again");
    drop(cluster);
}
