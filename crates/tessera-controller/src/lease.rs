//! Leader election with a `coordination.k8s.io/v1` Lease, so that one replica acts and the
//! others wait.
//!
//! Every write carries the `metadata.resourceVersion` of the Lease it read (a create carries
//! none, and fails if the Lease exists), so when two replicas race, the API server accepts one
//! write and answers the other 409 Conflict: both cannot win. A replica takes the Lease over
//! only when it is free (no holder) or expired (`renewTime + leaseDurationSeconds < now`).
//! The holder renews every third of the duration and steps down when it has not renewed for
//! two thirds of it, before any other replica may consider the Lease expired.

use std::time::Duration;

// k8s-openapi's time types wrap its own jiff version.
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// What one attempt to take or renew the Lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease until at least now plus the lease duration.
    Held,
    /// Another replica holds it (`holder`, when known); wait.
    Standby {
        /// The holder's identity, when known.
        holder: Option<String>,
    },
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LeaseEnded {
    /// Another replica holds the Lease now.
    #[error(
        "lost the Lease {lease} to {}; stopping so that only one replica acts",
        holder.as_deref().unwrap_or("another replica")
    )]
    Lost {
        /// namespace/name of the Lease.
        lease: String,
        /// The new holder, when known.
        holder: Option<String>,
    },
    /// Renewals failed for two thirds of the lease duration.
    #[error(
        "could not renew the Lease {lease} for {elapsed:?}; stopping \
         before another replica takes over; check that the API server is reachable and that \
         the service account may get and update leases"
    )]
    NotRenewed {
        /// namespace/name of the Lease.
        lease: String,
        /// Time since the last renewal.
        elapsed: Duration,
        /// The last failure; `None` when the last attempt did not answer in time.
        #[source]
        source: Option<kube::Error>,
    },
}

/// One replica's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    /// The Lease `namespace/name`, held under `identity` for `duration` (whole seconds).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// This replica's identity (holderIdentity).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Reads the Lease and creates, renews or takes it over if this replica may.
    pub async fn try_acquire(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return self
                .write(self.api.create(&PostParams::default(), &self.fresh(now)))
                .await;
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(self.identity.as_str()) {
            let renewed = self.renewed(current, now);
            return self.write(self.replace(&renewed)).await;
        }
        if holder.is_some() && !self.expired(&spec, now) {
            return Ok(Attempt::Standby { holder });
        }
        let taken = self.taken_over(current, now);
        self.write(self.replace(&taken)).await
    }

    /// Gives the Lease up (clears holderIdentity) if this replica holds it, so a standby
    /// replica takes over at once instead of after the lease duration.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = current.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.replace(&current).await.map(drop)
    }

    /// Waits until this replica holds the Lease, trying every third of the duration.
    /// `on_standby` hears who holds it after each attempt that did not win.
    pub async fn acquire(&self, mut on_standby: impl FnMut(Result<Option<String>, kube::Error>)) {
        loop {
            match self.try_acquire(Timestamp::now()).await {
                Ok(Attempt::Held) => return,
                Ok(Attempt::Standby { holder }) => on_standby(Ok(holder)),
                Err(error) => on_standby(Err(error)),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the Lease every third of its duration for as long as this replica holds it;
    /// returns why it stopped. A failed renewal is retried every second, and each attempt is
    /// cut off, so that a replica that has not renewed for two thirds of the duration stops
    /// before another may take over.
    pub async fn keep(&self) -> LeaseEnded {
        let mut last_renewal = tokio::time::Instant::now();
        let deadline = self.duration * 2 / 3;
        loop {
            let since = last_renewal.elapsed();
            tokio::time::sleep((self.duration / 3).saturating_sub(since)).await;
            loop {
                let attempt_started = tokio::time::Instant::now();
                let remaining = deadline.saturating_sub(last_renewal.elapsed());
                let attempt =
                    tokio::time::timeout(remaining, self.try_acquire(Timestamp::now())).await;
                let error = match attempt {
                    Ok(Ok(Attempt::Held)) => {
                        last_renewal = attempt_started;
                        break;
                    }
                    Ok(Ok(Attempt::Standby { holder })) => {
                        return LeaseEnded::Lost {
                            lease: self.lease_ref(),
                            holder,
                        }
                    }
                    Ok(Err(error)) => Some(error),
                    Err(_timed_out) => None,
                };
                let elapsed = last_renewal.elapsed();
                if elapsed + Duration::from_secs(1) >= deadline {
                    return LeaseEnded::NotRenewed {
                        lease: self.lease_ref(),
                        elapsed,
                        source: error,
                    };
                }
                if let Some(error) = error {
                    tracing::warn!(lease = %self.lease_ref(), %error, "renewing the Lease failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Turns the answer to a write into an attempt: 409 means another replica wrote first.
    async fn write(
        &self,
        request: impl std::future::Future<Output = Result<Lease, kube::Error>>,
    ) -> Result<Attempt, kube::Error> {
        match request.await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(Attempt::Standby { holder: None })
            }
            Err(error) => Err(error),
        }
    }

    /// PUT of the whole Lease: its resourceVersion is the precondition.
    async fn replace(&self, lease: &Lease) -> Result<Lease, kube::Error> {
        self.api
            .replace(&self.name, &PostParams::default(), lease)
            .await
    }

    fn expired(&self, spec: &LeaseSpec, now: Timestamp) -> bool {
        let Some(MicroTime(renewed)) = spec.renew_time else {
            return true;
        };
        let seconds = spec
            .lease_duration_seconds
            .unwrap_or(self.duration_seconds());
        let valid_until = renewed.checked_add(SignedDuration::from_secs(i64::from(seconds)));
        valid_until.is_ok_and(|until| until < now)
    }

    fn fresh(&self, now: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    fn renewed(&self, mut lease: Lease, now: Timestamp) -> Lease {
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.duration_seconds());
        lease
    }

    fn taken_over(&self, mut lease: Lease, now: Timestamp) -> Lease {
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        lease
    }
}
