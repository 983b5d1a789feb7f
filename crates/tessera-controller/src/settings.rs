//! Command-line settings of `tessera-controller`, each also readable from the environment.
//!
//! Parsed once into typed values ([`Settings`]); nothing downstream re-reads strings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

/// Settings of one controller process.
#[derive(Debug, Parser)]
#[command(name = "tessera-controller", version)]
#[command(
    about = "Keeps Tessera's datastore in step with a Kubernetes cluster",
    long_about = "Keeps Tessera's datastore in step with a Kubernetes cluster.\n\n\
        Run one Deployment per cluster (two replicas for fail-over: a coordination.k8s.io \
        Lease lets one act while the other waits). While it holds the lease it:\n\
        \n  \
        - copies Kubernetes Node labels into Tessera's node records, so pools chosen by \
        nodeSelector follow kubectl label; labels set with `tessera label node` survive;\n  \
        - copies Namespace labels and pool annotations (cni.projectcalico.org/ipv4pools, \
        ipv6pools, ipam.spidernet.io/default-ipv4-ippool, default-ipv6-ippool) into \
        namespace records, and deletes the record of a deleted namespace;\n  \
        - when a Node is deleted (confirmed by a fresh GET), releases its pods' addresses, \
        gives back its empty blocks and deletes its record;\n  \
        - releases leaked addresses: those whose pod is gone, was recreated with another \
        UID, runs on another node or has finished. An address is released only after it \
        has looked leaked for the whole --leak-grace-period and a fresh GET of its pod \
        confirms it; handles made by hand (`tessera ipam assign` without a pod) are never \
        touched;\n  \
        - keeps a StatefulSet pod's addresses held for its name while the StatefulSet exists \
        and the pod's ordinal is within its replicas, and releases them after a scale-down \
        below it or the StatefulSet's deletion;\n  \
        - gives Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs whose \
        pods name a SpiderSubnet (ipam.spidernet.io/subnet or subnets) their own SpiderIPPool \
        per interface and family, sized by ipam.spidernet.io/ippool-ip-number and following \
        the replicas;\n  \
        - carries SpiderSubnets, SpiderIPPools, SpiderReservedIPs and Calico IPPools and \
        IPReservations applied with kubectl into the datastore (validated as by `tessera \
        apply`; a refusal is a Synced=False condition and an Event), deletes them there when \
        they are deleted, and writes their status back at least every minute;\n  \
        - drains a pool `tessera ipam migrate` disabled with a tessera.dev/drain request: \
        restarts the Deployments, StatefulSets and DaemonSets whose pods hold its addresses \
        as `kubectl rollout restart` does, each once, at most maxParallel not yet ready at a \
        time, lists the pods it cannot move, and writes its progress on the pool \
        (tessera.dev/drain-status).\n\n\
        It serves /metrics (Prometheus), /healthz and /readyz on --listen.",
    after_help = "Durations are written like 90s, 15m, 1h30m or 0."
)]
pub struct Settings {
    /// Tessera's datastore: etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS) in a cluster;
    /// a SQLite file path or sqlite:PATH for a single machine. The same datastore as the
    /// CNI plugin's `datastore` setting.
    #[arg(long, env = "TESSERA_DATASTORE", value_name = "URL")]
    pub datastore: String,

    /// Kubeconfig file to reach the API server. Default: the pod's service account when
    /// running in a cluster, else ~/.kube/config.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9094", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Connection settings of an etcd datastore.
    #[command(flatten)]
    pub etcd: tessera_store::etcd_args::EtcdArgs,

    /// Garbage collection of leaked addresses and of deleted nodes.
    #[command(flatten)]
    pub gc: GcArgs,

    /// Leader election.
    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// When and how much garbage collection releases.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Garbage collection")]
pub struct GcArgs {
    /// How long an address must look leaked before it is released (Calico's
    /// leakGracePeriod). 0 turns collection of leaked addresses off; the addresses of
    /// deleted nodes are still released.
    #[arg(long, default_value = "15m", value_name = "DURATION", value_parser = parse_duration)]
    pub leak_grace_period: Duration,

    /// How often every handle is compared with the pods and every node record with the
    /// nodes (watch events can be lost). Pod deletions also trigger a pass, two seconds
    /// after the last of a burst.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_interval)]
    pub gc_interval: Duration,

    /// Most handles released in one pass, so a mistake cannot empty a pool at once.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gc_max_releases: u32,
}

/// Which Lease elects the one acting replica, and who this replica is.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Leader election")]
pub struct LeaseArgs {
    /// Namespace of the coordination.k8s.io Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "tessera-system",
        value_name = "NAMESPACE"
    )]
    pub lease_namespace: String,

    /// Name of the Lease.
    #[arg(long, default_value = "tessera-controller", value_name = "NAME")]
    pub lease_name: String,

    /// This replica's name in the Lease's holderIdentity. Default: the host name (a pod's
    /// name in a cluster).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,

    /// How long a lease lasts without renewal; the holder renews it every third of this.
    /// Whole seconds, at least 3s.
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_lease_duration)]
    pub lease_duration: Duration,
}

impl LeaseArgs {
    /// `--identity`, else the host name read by `hostname` (passed in so tests choose it).
    pub fn identity_or(&self, hostname: impl FnOnce() -> Option<String>) -> String {
        self.identity
            .clone()
            .filter(|i| !i.is_empty())
            .or_else(hostname)
            .unwrap_or_else(|| format!("tessera-controller-{}", std::process::id()))
    }
}

/// The host name from the kernel, if it can be read.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Parses `15m`, `90s`, `1h30m` or `0` (jiff's friendly format; ISO 8601 `PT15M` too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let signed: jiff::SignedDuration = text.parse().map_err(|e| {
        format!("{text:?} is not a duration ({e}); write it like 90s, 15m, 1h30m or 0")
    })?;
    Duration::try_from(signed)
        .map_err(|_| format!("{text:?} is negative; give a duration of 0 or more"))
}

/// A duration that paces a loop: at least one second.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err(format!("{text:?} is too short; give at least 1s"));
    }
    Ok(duration)
}

/// A lease duration: whole seconds (the Lease stores seconds), at least 3 so that renewing
/// every third leaves whole seconds between renewals.
fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(3) || duration.subsec_nanos() != 0 {
        return Err(format!(
            "{text:?} cannot be a lease duration; give whole seconds, at least 3s (e.g. 15s)"
        ));
    }
    if i32::try_from(duration.as_secs()).is_err() {
        return Err(format!("{text:?} is too long for a lease duration"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        let mut argv = vec!["tessera-controller", "--datastore", "etcd://127.0.0.1:2379"];
        argv.extend_from_slice(args);
        Settings::try_parse_from(argv)
    }

    #[test]
    fn durations_in_friendly_format() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("PT2M"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn bad_durations_say_how_to_write_one() {
        let error = parse_duration("15 minutes please").unwrap_err();
        assert!(error.contains("15m"), "{error}");
        assert!(parse_duration("-5m").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.gc.leak_grace_period, Duration::from_secs(15 * 60));
        assert_eq!(settings.gc.gc_interval, Duration::from_secs(5 * 60));
        assert_eq!(settings.gc.gc_max_releases, 100);
        assert_eq!(settings.listen, "0.0.0.0:9094".parse().unwrap());
        assert_eq!(settings.lease.lease_name, "tessera-controller");
        assert_eq!(settings.lease.lease_duration, Duration::from_secs(15));
    }

    #[test]
    fn grace_zero_turns_leak_collection_off() {
        let settings = parse(&["--leak-grace-period", "0"]).unwrap();
        assert_eq!(settings.gc.leak_grace_period, Duration::ZERO);
    }

    #[test]
    fn flags_override_defaults() {
        let settings = parse(&[
            "--leak-grace-period",
            "90s",
            "--gc-interval",
            "1h30m",
            "--gc-max-releases",
            "7",
            "--listen",
            "127.0.0.1:19094",
            "--lease-namespace",
            "kube-system",
            "--lease-name",
            "ipam",
            "--identity",
            "replica-a",
            "--lease-duration",
            "30s",
            "--kubeconfig",
            "/etc/kubeconfig",
        ])
        .unwrap();
        assert_eq!(settings.gc.leak_grace_period, Duration::from_secs(90));
        assert_eq!(settings.gc.gc_interval, Duration::from_secs(5400));
        assert_eq!(settings.gc.gc_max_releases, 7);
        assert_eq!(settings.listen.port(), 19094);
        assert_eq!(settings.lease.lease_namespace, "kube-system");
        assert_eq!(settings.lease.lease_name, "ipam");
        assert_eq!(settings.lease.identity_or(|| None), "replica-a");
        assert_eq!(settings.lease.lease_duration, Duration::from_secs(30));
        assert_eq!(settings.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
    }

    #[test]
    fn nonsense_values_are_refused() {
        for args in [
            &["--gc-interval", "0"][..],
            &["--gc-max-releases", "0"],
            &["--lease-duration", "2s"],
            &["--lease-duration", "1500ms"],
            &["--leak-grace-period", "soon"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn the_datastore_is_required() {
        let error = Settings::try_parse_from(["tessera-controller"]).unwrap_err();
        assert!(error.to_string().contains("--datastore"), "{error}");
    }

    #[test]
    fn identity_falls_back_to_the_host_name() {
        let settings = parse(&[]).unwrap();
        let expected = settings.lease.identity.clone().unwrap_or("node-7".into());
        assert_eq!(
            settings.lease.identity_or(|| Some("node-7".into())),
            expected
        );
    }

    #[test]
    fn etcd_flags_become_open_options() {
        let settings = parse(&["--etcd-ca", "/ca.pem", "--etcd-username", ""]).unwrap();
        let options = settings.etcd.options();
        assert_eq!(options.etcd_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(options.etcd_username, None);
    }
}
