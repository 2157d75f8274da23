//! Leader election on a `coordination.k8s.io` Lease, so that several replicas can run and one
//! reconciles. The leader renews the Lease; a replica takes it over once it has not been
//! renewed for its duration. A leader that cannot renew in time returns, and the process exits
//! rather than risk two leaders.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;

use super::children::MANAGER;
use crate::{Error, Result};

/// How long a Lease holds without renewal.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and standbys retry.
const RETRY_PERIOD: Duration = Duration::from_secs(4);

/// What to do with a Lease as found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// This replica holds it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Another replica holds it.
    Wait,
}

/// Decides from the Lease's spec alone, so the rule is testable without a server.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else { return Decision::Acquire };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let duration = SignedDuration::from_secs(
                spec.lease_duration_seconds.unwrap_or(LEASE_DURATION.as_secs() as i32).into(),
            );
            let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
            match renewed {
                Some(renewed) if renewed + duration > now => Decision::Wait,
                _ => Decision::Acquire,
            }
        }
    }
}

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElection { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into() }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            if self.try_hold().await? {
                tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                return Ok(());
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews the Lease until renewal fails for a whole Lease duration; then returns the error.
    pub async fn hold(&self) -> Error {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            match self.try_hold().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => return Error::LeadershipLost(format!("Lease {} was taken over", self.name)),
                Err(e) if last_renewal.elapsed() >= LEASE_DURATION => return e,
                Err(e) => tracing::warn!(error = %e, "renewing the leader Lease failed; retrying"),
            }
        }
    }

    /// Takes or renews the Lease if this replica may; true when it holds it now.
    async fn try_hold(&self) -> Result<bool> {
        let now = Timestamp::now();
        let existing =
            self.api.get_opt(&self.name).await.map_err(|e| Error::kube(format!("reading Lease {}", self.name), e))?;
        let decision = decide(existing.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        if decision == Decision::Wait {
            return Ok(false);
        }
        let previous = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: match decision {
                Decision::Renew => previous.acquire_time.clone(),
                _ => Some(MicroTime(now)),
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0)
                    + i32::from(decision == Decision::Acquire && existing.is_some()),
            ),
            ..Default::default()
        };
        let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        let written = match existing {
            // The resourceVersion makes the write conditional: of two replicas racing for an
            // expired Lease, one gets a conflict.
            Some(lease) => {
                self.api.replace(&self.name, &params, &Lease { metadata: lease.metadata, spec: Some(spec) }).await
            }
            None => {
                let metadata = ObjectMeta { name: Some(self.name.clone()), ..Default::default() };
                self.api.create(&params, &Lease { metadata, spec: Some(spec) }).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(format!("writing Lease {}", self.name), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed_seconds_ago: i64, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_seconds_ago))),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "me", now), Decision::Acquire);
        assert_eq!(decide(Some(&LeaseSpec::default()), "me", now), Decision::Acquire);
    }

    #[test]
    fn a_lease_held_by_this_replica_is_renewed() {
        let now = Timestamp::now();
        assert_eq!(decide(Some(&held("me", 100, now)), "me", now), Decision::Renew);
    }

    #[test]
    fn another_holders_lease_is_respected_until_it_expires() {
        let now = Timestamp::now();
        assert_eq!(decide(Some(&held("other", 5, now)), "me", now), Decision::Wait);
        assert_eq!(decide(Some(&held("other", 20, now)), "me", now), Decision::Acquire);
    }
}
