//! Keeping a private cluster up: when its postmaster exits without being asked to (killed,
//! crashed, stopped by the OOM killer), a new one is started on the same data directory and
//! port, so that the application's pool finds the database again at the same URL.

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::postmaster::shut_down;
use super::{PrivateCluster, Slot, lock};

/// How often the postmaster is checked: a failed query notices sooner, but this bounds the
/// outage when nothing is querying.
const POLL: Duration = Duration::from_millis(200);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The task that watches one cluster's postmaster; it ends when the cluster is stopped.
#[derive(Debug)]
pub(super) struct Supervisor {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts watching `cluster` on the current tokio runtime.
    pub(super) fn start(cluster: &PrivateCluster, runtime: &tokio::runtime::Handle) -> Supervisor {
        let stop = CancellationToken::new();
        let target = Target {
            slot: cluster.postmaster.clone(),
            data_dir: cluster.data_dir.clone(),
            port: cluster.port,
            parent_death_signal: cluster.parent_death_signal,
        };
        let task = runtime.spawn(target.watch(stop.clone()));
        Supervisor {
            stop,
            task: Some(task),
        }
    }

    /// Stops watching, after a restart under way (if any) has finished.
    pub(super) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Target {
    slot: Arc<Mutex<Slot>>,
    data_dir: PathBuf,
    port: u16,
    parent_death_signal: bool,
}

impl Target {
    async fn watch(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let status = {
                let mut slot = lock(&self.slot);
                if slot.stopped {
                    return;
                }
                match slot.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        slot.child = None;
                        status
                    }
                    _ => continue,
                }
            };
            tracing::error!(
                %status,
                port = self.port,
                data_dir = %self.data_dir.display(),
                "the private PostgreSQL server exited unexpectedly; restarting it"
            );
            if !self.restart(&stop).await {
                return;
            }
        }
    }

    /// Starts a new postmaster, retrying until it runs (true) or the cluster is stopped.
    async fn restart(&self, stop: &CancellationToken) -> bool {
        let started = Instant::now();
        let mut delay = FIRST_RETRY;
        loop {
            // Not raced against `stop`: abandoning a start half way would leave its
            // postmaster running with nobody to stop it.
            match PrivateCluster::start_inner(
                &self.data_dir,
                self.parent_death_signal,
                Some(self.port),
            )
            .await
            {
                Ok(fresh) => {
                    // The cluster may have been stopped meanwhile; then the new postmaster
                    // comes back out, to be shut down here.
                    let unwanted = {
                        let mut slot = lock(&self.slot);
                        if slot.stopped {
                            fresh.take_postmaster()
                        } else {
                            slot.child = fresh.take_postmaster();
                            None
                        }
                    };
                    if let Some(mut child) = unwanted {
                        let _ = tokio::task::spawn_blocking(move || shut_down(&mut child)).await;
                        return false;
                    }
                    tracing::info!(
                        port = self.port,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "the private PostgreSQL server is running again"
                    );
                    return true;
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        retry_in_ms = delay.as_millis() as u64,
                        "restarting the private PostgreSQL server failed"
                    );
                }
            }
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }
}
