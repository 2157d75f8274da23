//! Leader election on a `coordination.k8s.io` Lease, so that several replicas can run and one
//! reconciles. kube-lease-manager does the locking (server-side apply, so two replicas racing
//! for a free Lease cannot both win); this module says what the operator does with it: wait to
//! lead, keep leading or stop, and free the Lease on shutdown so a standby takes over at once.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};

use super::children::MANAGER;
use crate::{Error, Result};

/// How long a Lease holds without renewal.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long before the Lease expires the leader renews it: every 5 s, leaving 10 s for a slow
/// API server before a standby may take over (client-go's leader election keeps the same slack).
const RENEW_GRACE: Duration = Duration::from_secs(10);
/// Between attempts after a failed call to the API server.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

pub struct Leadership {
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    manager: LeaseManager,
}

impl Leadership {
    /// The Lease `name` in `namespace` (created when absent), held as `identity`.
    pub async fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Result<Self> {
        let manager = manager(&client, namespace, name, identity).await?;
        Ok(Leadership { client, namespace: namespace.into(), name: name.into(), identity: identity.into(), manager })
    }

    /// Waits until this replica leads. Failed calls are retried: a standby outlives an API
    /// server restart.
    ///
    /// The lock manager checks a Lease held by another replica again only when it would expire,
    /// so a Lease freed on the leader's shutdown would wait out its whole duration. A watch on
    /// the Lease sees it freed; a fresh manager (whose first look reads the Lease anew) then
    /// takes it at once.
    pub async fn acquire(&mut self) -> Result<()> {
        loop {
            let outcome = tokio::select! {
                outcome = self.manager.changed() => outcome,
                () = freed(Api::namespaced(self.client.clone(), &self.namespace), &self.name) => {
                    self.manager = manager(&self.client, &self.namespace, &self.name, &self.identity).await?;
                    continue;
                }
            };
            match outcome {
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
    /// over, or renewing has failed for as long as the Lease had left when the renewal was due
    /// (after which another may lead, so this one must stop rather than risk two leaders).
    pub async fn hold(&self) -> Error {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            match self.manager.changed().await {
                Ok(true) => failing_since = None,
                Ok(false) => return Error::LeadershipLost(self.name.clone()),
                Err(source) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() + RETRY_PERIOD >= RENEW_GRACE {
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

async fn manager(client: &Client, namespace: &str, name: &str, identity: &str) -> Result<LeaseManager> {
    LeaseManagerBuilder::new(client.clone(), name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION.as_secs())
        .with_grace(RENEW_GRACE.as_secs())
        .with_field_manager(MANAGER)
        .build()
        .await
        .map_err(|source| Error::Lease { name: name.into(), source })
}

/// Returns once a change to the Lease leaves it without a holder. The state found when the
/// watch starts is not a change: a Lease free at that moment is the lock manager's to take. A
/// failing watch retries with backoff; meanwhile the lock manager's own polling goes on.
async fn freed(leases: Api<Lease>, name: &str) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(leases, config).default_backoff());
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Apply(lease)))
                if lease.spec.as_ref().is_none_or(|s| s.holder_identity.is_none()) =>
            {
                return
            }
            Ok(Some(_)) => {}
            Ok(None) => futures::future::pending::<()>().await,
            Err(e) => tracing::debug!(lease = %name, error = %e, "watching the leader Lease failed; retrying"),
        }
    }
}
