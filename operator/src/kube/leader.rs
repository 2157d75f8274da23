//! Leader election on a `coordination.k8s.io` Lease, so that several replicas can run and one
//! reconciles. kube-lease-manager does the locking (server-side apply, so two replicas racing
//! for a free Lease cannot both win); this module says what the operator does with it: wait to
//! lead, keep leading or stop, and free the Lease on shutdown so a standby takes over at once.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};

use super::children::MANAGER;
use crate::{Error, Result};

/// How long a Lease holds without renewal.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long before the Lease expires the leader renews it.
const RENEW_GRACE: Duration = Duration::from_secs(5);
/// Between attempts after a failed call to the API server.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

pub struct Leadership {
    manager: LeaseManager,
    name: String,
    identity: String,
}

impl Leadership {
    /// The Lease `name` in `namespace` (created when absent), held as `identity`.
    pub async fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Result<Self> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_DURATION.as_secs())
            .with_grace(RENEW_GRACE.as_secs())
            .with_field_manager(MANAGER)
            .build()
            .await
            .map_err(|source| Error::Lease { name: name.into(), source })?;
        Ok(Leadership { manager, name: name.into(), identity: identity.into() })
    }

    /// Waits until this replica leads. Failed calls are retried: a standby outlives an API
    /// server restart.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            match self.manager.changed().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "waiting for the leader Lease failed; retrying");
                    tokio::time::sleep(RETRY_PERIOD).await;
                }
            }
        }
    }

    /// Keeps the Lease renewed. Returns when this replica no longer leads: another took the Lease
    /// over, or renewing failed for a whole Lease duration (after which another may lead, so
    /// this one must stop rather than risk two leaders).
    pub async fn hold(&self) -> Error {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            match self.manager.changed().await {
                Ok(true) => failing_since = None,
                Ok(false) => return Error::LeadershipLost(self.name.clone()),
                Err(source) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= LEASE_DURATION {
                        return Error::Lease { name: self.name.clone(), source };
                    }
                    tracing::warn!(lease = %self.name, error = %source, "renewing the leader Lease failed; retrying");
                    tokio::time::sleep(RETRY_PERIOD).await;
                }
            }
        }
    }

    /// Frees the Lease if this replica holds it.
    pub async fn release(&self) {
        match self.manager.release().await {
            Ok(()) => tracing::info!(lease = %self.name, identity = %self.identity, "released the leader Lease"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "releasing the leader Lease failed"),
        }
    }
}
