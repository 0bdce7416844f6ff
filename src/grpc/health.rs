//! Health as `grpc.health.v1` reports it. A service is SERVING only while this server serves
//! it and the database behind it answers; the whole server ("") likewise. Every service the
//! API declares but this server does not (or only partly) serve is NOT_SERVING, so that a
//! client asking about one gets a definite answer rather than NOT_FOUND, and can watch it.

use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::pb;

/// The services this server serves completely.
const SERVED: [&str; 8] = [
    pb::analytics_service_server::SERVICE_NAME,
    pb::admin::tenant_service_server::SERVICE_NAME,
    pb::auth_service_server::SERVICE_NAME,
    pb::agent_service_server::SERVICE_NAME,
    pb::conversation_service_server::SERVICE_NAME,
    pb::workflow_service_server::SERVICE_NAME,
    pb::visitor_service_server::SERVICE_NAME,
    pb::queue_service_server::SERVICE_NAME,
];

/// Keeps the reported statuses in step with the database until shutdown.
pub(super) struct Health {
    reporter: HealthReporter,
    stop: CancellationToken,
    follower: JoinHandle<()>,
}

impl Health {
    /// Reports the current state, then follows `database_up`.
    pub(super) async fn start(
        reporter: HealthReporter,
        mut database_up: watch::Receiver<bool>,
    ) -> anyhow::Result<Health> {
        for name in declared_services()? {
            if !SERVED.contains(&name.as_str()) {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        }
        let up = *database_up.borrow_and_update();
        report(&reporter, up).await;
        let stop = CancellationToken::new();
        let follower = tokio::spawn({
            let (reporter, stop) = (reporter.clone(), stop.clone());
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        changed = database_up.changed() => if changed.is_err() { return },
                    }
                    let up = *database_up.borrow_and_update();
                    report(&reporter, up).await;
                }
            }
        });
        Ok(Health {
            reporter,
            stop,
            follower,
        })
    }

    /// Reports everything NOT_SERVING for good: the server is going away.
    pub(super) async fn shutting_down(self) {
        self.stop.cancel();
        let _ = self.follower.await;
        report(&self.reporter, false).await;
    }
}

/// Sets "" and the served services; the rest stay NOT_SERVING, as [`Health::start`] set them
/// (setting a status again would repeat it to every watcher).
async fn report(reporter: &HealthReporter, up: bool) {
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    for name in SERVED {
        reporter.set_service_status(name, status).await;
    }
}

/// Every service of the chat-engine API, by its full name, as reflection lists them.
fn declared_services() -> anyhow::Result<Vec<String>> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)?;
    Ok(set
        .file
        .iter()
        .flat_map(|file| {
            file.service
                .iter()
                .map(|service| format!("{}.{}", file.package(), service.name()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_service_is_served() {
        let mut declared = declared_services().unwrap();
        let mut served = SERVED.map(str::to_owned).to_vec();
        declared.sort();
        served.sort();
        assert_eq!(declared, served);
    }
}
