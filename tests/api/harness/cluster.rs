//! The PostgreSQL side: one private cluster per test process (started from the server binaries on
//! the machine, killed when the test process dies) with a migrated template database, a fresh
//! clone of it per test, and a cluster of a test's own for tests that stop the database.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use chat_engine::pgcluster::PrivateCluster;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

const TEMPLATE: &str = "chat_template";

struct Cluster {
    admin_url_base: String,
    app_url_base: String,
}

impl Cluster {
    fn admin_url(&self, db: &str) -> String {
        format!("{}{db}", self.admin_url_base)
    }
    fn app_url(&self, db: &str) -> String {
        format!("{}{db}", self.app_url_base)
    }
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The cluster lives on its own thread and runtime for the whole test process, so it
        // outlives every per-test runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let dir = test_dir();
                let c = PrivateCluster::start_with_parent_death_signal(&dir)
                    .await
                    .expect("starting the test PostgreSQL cluster");
                c.ensure_app_role().await.expect("app role");
                c.create_database(TEMPLATE).await.expect("template db");
                chat_engine::storage::migrate(&c.admin_url(TEMPLATE))
                    .await
                    .expect("migrating the template");
                let admin = c.admin_url(TEMPLATE);
                let app = c.app_url(TEMPLATE);
                tx.send(Cluster {
                    admin_url_base: admin.trim_end_matches(TEMPLATE).to_owned(),
                    app_url_base: app.trim_end_matches(TEMPLATE).to_owned(),
                })
                .expect("harness waiting");
                std::future::pending::<()>().await;
                drop(c);
            });
        });
        rx.recv().expect("cluster thread died")
    })
}

fn test_dir() -> PathBuf {
    let base = std::env::temp_dir();
    // Sweep clusters of earlier runs whose process is gone.
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("chat-engine-test-")
                && !PathBuf::from(format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    base.join(format!("chat-engine-test-{}", std::process::id()))
}

/// A fresh database cloned from the migrated template.
pub async fn fresh_database() -> (String, String) {
    let c = cluster();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&c.admin_url("postgres"))
        .await
        .expect("admin connection");
    // Concurrent clones of one template can collide; retry briefly.
    for attempt in 0.. {
        match conn
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
        {
            Ok(()) => break,
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cloning the template: {e}"),
        }
    }
    (c.admin_url(&name), c.app_url(&name))
}

/// A PostgreSQL cluster of one test's own (for tests that restart the database), with a
/// migrated database; returns the cluster and (admin URL, app URL).
pub async fn own_cluster() -> (PrivateCluster, tempfile::TempDir, (String, String)) {
    let dir = tempfile::Builder::new()
        .prefix("chat-engine-t-")
        .tempdir()
        .expect("temp dir");
    let c = PrivateCluster::start_with_parent_death_signal(&dir.path().join("pg"))
        .await
        .expect("own cluster");
    c.ensure_app_role().await.expect("app role");
    c.create_database("chat").await.expect("db");
    chat_engine::storage::migrate(&c.admin_url("chat"))
        .await
        .expect("migrate");
    let urls = (c.admin_url("chat"), c.app_url("chat"));
    (c, dir, urls)
}
