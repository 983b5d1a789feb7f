//! Every metric the controller exports, in one registry.
//!
//! Names are part of the interface (dashboards and the end-to-end tests read them):
//! `tessera_pool_size{pool}`, `tessera_pool_addresses_in_use{pool}`, `tessera_pool_blocks{pool}`,
//! `tessera_gc_candidates`, `tessera_gc_releases_total{reason}`,
//! `tessera_sync_errors_total{kind}`, `tessera_controller_leader`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_core::ipam::Usage;

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the per-pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

/// Labels of the release counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Pool sizes exceed `i64` (an IPv6 /64 holds 2^64 addresses), so pool gauges are floats.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The controller's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pool_size: Family<PoolLabel, FloatGauge>,
    pool_in_use: Family<PoolLabel, FloatGauge>,
    pool_blocks: Family<PoolLabel, Gauge>,
    gc_candidates: Gauge,
    gc_releases: Family<ReasonLabel, Counter>,
    sync_errors: Family<KindLabel, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::default(),
            pool_size: Family::default(),
            pool_in_use: Family::default(),
            pool_blocks: Family::default(),
            gc_candidates: Gauge::default(),
            gc_releases: Family::default(),
            sync_errors: Family::default(),
            leader: Gauge::default(),
        };
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "tessera_pool_size",
            "Addresses in the pool",
            self.pool_size.clone(),
        );
        r.register(
            "tessera_pool_addresses_in_use",
            "Addresses of the pool that are allocated",
            self.pool_in_use.clone(),
        );
        r.register(
            "tessera_pool_blocks",
            "Blocks of the pool claimed by nodes",
            self.pool_blocks.clone(),
        );
        r.register(
            "tessera_gc_candidates",
            "Handles that look leaked and wait for their grace period",
            self.gc_candidates.clone(),
        );
        // The encoder appends `_total` to counters.
        r.register(
            "tessera_gc_releases",
            "Leaked handles released, by reason",
            self.gc_releases.clone(),
        );
        r.register(
            "tessera_sync_errors",
            "Failed datastore or Kubernetes API operations, by kind",
            self.sync_errors.clone(),
        );
        r.register(
            "tessera_controller_leader",
            "1 while this replica holds the lease and acts, else 0",
            self.leader.clone(),
        );
    }

    /// Replaces the per-pool gauges with `usage` (pools deleted since disappear).
    pub fn set_usage(&self, usage: &Usage) {
        self.pool_size.clear();
        self.pool_in_use.clear();
        self.pool_blocks.clear();
        for pool in &usage.pools {
            // Blocks left by a deleted pool are grouped under its network.
            let name = if pool.name.is_empty() {
                pool.cidr.to_string()
            } else {
                pool.name.clone()
            };
            let label = PoolLabel { pool: name };
            self.pool_size.get_or_create(&label).set(pool.total as f64);
            self.pool_in_use
                .get_or_create(&label)
                .set(pool.in_use as f64);
            let blocks = i64::try_from(pool.blocks.len()).unwrap_or(i64::MAX);
            self.pool_blocks.get_or_create(&label).set(blocks);
        }
    }

    /// Sets the number of leak candidates waiting for their grace period.
    pub fn set_gc_candidates(&self, count: usize) {
        self.gc_candidates
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts one released handle.
    pub fn count_release(&self, reason: &str) {
        let label = ReasonLabel {
            reason: reason.to_string(),
        };
        self.gc_releases.get_or_create(&label).inc();
    }

    /// Shows the release counter of `reason` (at 0 until a release), so that dashboards and
    /// `rate()` see the series before the first release.
    pub fn show_release_reason(&self, reason: &str) {
        let label = ReasonLabel {
            reason: reason.to_string(),
        };
        drop(self.gc_releases.get_or_create(&label));
    }

    /// Shows the error counter of `kind` (at 0 until a failure).
    pub fn show_error_kind(&self, kind: &str) {
        let label = KindLabel {
            kind: kind.to_string(),
        };
        drop(self.sync_errors.get_or_create(&label));
    }

    /// Counts one failed operation.
    pub fn count_error(&self, kind: &str) {
        let label = KindLabel {
            kind: kind.to_string(),
        };
        self.sync_errors.get_or_create(&label).inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ipam::PoolUsage;

    fn pool(name: &str, cidr: &str, total: u128, in_use: u128) -> PoolUsage {
        PoolUsage {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            total,
            in_use,
            blocks: Vec::new(),
        }
    }

    #[test]
    fn names_are_the_documented_ones() {
        let metrics = Metrics::new();
        metrics.set_usage(&Usage {
            pools: vec![pool("rack-a", "10.0.0.0/24", 256, 3)],
        });
        metrics.set_gc_candidates(2);
        metrics.count_release("pod_gone");
        metrics.count_error("datastore");
        metrics.set_leader(true);
        let text = metrics.encode();
        for line in [
            "tessera_pool_size{pool=\"rack-a\"} 256",
            "tessera_pool_addresses_in_use{pool=\"rack-a\"} 3",
            "tessera_pool_blocks{pool=\"rack-a\"} 0",
            "tessera_gc_candidates 2",
            "tessera_gc_releases_total{reason=\"pod_gone\"} 1",
            "tessera_sync_errors_total{kind=\"datastore\"} 1",
            "tessera_controller_leader 1",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn shown_counters_start_at_zero() {
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("tessera_gc_releases"));
        metrics.show_release_reason("pod_gone");
        metrics.show_error_kind("watch");
        let text = metrics.encode();
        assert!(
            text.contains("tessera_gc_releases_total{reason=\"pod_gone\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tessera_sync_errors_total{kind=\"watch\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn deleted_pools_leave_the_gauges() {
        let metrics = Metrics::new();
        metrics.set_usage(&Usage {
            pools: vec![pool("old", "10.1.0.0/24", 256, 0)],
        });
        metrics.set_usage(&Usage {
            pools: vec![pool("", "10.1.0.0/24", 256, 1)],
        });
        let text = metrics.encode();
        assert!(!text.contains("pool=\"old\""), "{text}");
        assert!(text.contains("pool=\"10.1.0.0/24\""), "{text}");
    }
}
