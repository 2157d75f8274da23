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
/// The longest a call on the Lease may take: a renewal that hangs fails instead, in time for the
/// leader to stop before the Lease it can no longer renew expires.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Leadership {
    /// For the watch on the Lease, which idles for as long as the Lease stays held.
    client: Client,
    /// For the lock manager's calls, with [`CALL_TIMEOUT`].
    timed: Client,
    namespace: String,
    name: String,
    identity: String,
    manager: LeaseManager,
}

impl Leadership {
    /// The Lease `name` in `namespace` (created when absent), held as `identity`.
    pub async fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Result<Self> {
        let mut config = kube::Config::infer().await.map_err(|e| Error::Connect(kube::Error::InferConfig(e)))?;
        config.connect_timeout = Some(CALL_TIMEOUT);
        config.read_timeout = Some(CALL_TIMEOUT);
        config.write_timeout = Some(CALL_TIMEOUT);
        config.reset_reader_on_write = true;
        let timed = Client::try_from(config).map_err(Error::Connect)?;
        let manager = manager(&timed, namespace, name, identity).await?;
        Ok(Leadership {
            client,
            timed,
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            manager,
        })
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
                    match manager(&self.timed, &self.namespace, &self.name, &self.identity).await {
                        Ok(fresh) => self.manager = fresh,
                        Err(e) => tracing::warn!(lease = %self.name, error = %e.chain(), "looking at the freed Lease failed"),
                    }
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
    /// over, or renewals keep failing, after which another may lead, so this one must stop rather
    /// than risk two leaders.
    ///
    /// The lock manager renews inside `changed()`, which returns only on a change or an error, so
    /// a success is seen as time without an error: failures are one run when each came within a
    /// retry and a call of the one before. A renewal is due `RENEW_GRACE` before expiry and each
    /// failure takes at most `CALL_TIMEOUT`; stopping once a run has lasted
    /// `RENEW_GRACE - 2 * (CALL_TIMEOUT + RETRY_PERIOD)` leaves the last retry's time before the
    /// Lease expires.
    pub async fn hold(&self) -> Error {
        let budget = RENEW_GRACE.saturating_sub(2 * (CALL_TIMEOUT + RETRY_PERIOD));
        let mut run: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
        loop {
            match self.manager.changed().await {
                Ok(true) => run = None,
                Ok(false) => return Error::LeadershipLost(self.name.clone()),
                Err(source) => {
                    let now = tokio::time::Instant::now();
                    let first = match run {
                        Some((first, last)) if now.duration_since(last) <= RETRY_PERIOD + CALL_TIMEOUT => first,
                        _ => now,
                    };
                    run = Some((first, now));
                    if now.duration_since(first) >= budget {
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
        // One field manager per replica: server-side apply then refuses the second of two
        // standbys racing for a freed Lease, instead of letting both believe they hold it.
        .with_field_manager(format!("{MANAGER}-{identity}"))
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
