//! Which allocations are leaked, and when one may be released, without I/O.
//!
//! The failure users of Calico, Spiderpool and Whereabouts report most is not a leak but the
//! opposite: a garbage collector freeing the address of a live pod. So every rule here errs
//! on keeping: [`judge`] calls a handle leaked only on positive evidence (its pod is gone, is
//! another pod of the same name, runs elsewhere, or has finished), and [`LeakTracker`] lets
//! a leaked handle go only after it has been seen leaked for a whole grace period by this
//! process. The caller adds the last two locks: a fresh GET of the pod right before the
//! release, and a release that compares the handle record it judged
//! ([`crate::datastore::Datastore::release_if_unchanged`]).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tessera_core::ipam::Attributes;

/// What garbage collection needs to know of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `spec.nodeName` (unset until the pod is scheduled).
    pub node_name: Option<String>,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`).
    pub phase: Option<String>,
    /// `status.reason` (`Evicted`, ...).
    pub reason: Option<String>,
    /// `metadata.deletionTimestamp`: set once the pod is Terminating.
    pub deletion_timestamp: Option<Timestamp>,
    /// `metadata.deletionGracePeriodSeconds`.
    pub deletion_grace_seconds: Option<i64>,
}

impl PodFacts {
    /// The facts of a pod as the API server returned it.
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        Self {
            uid: pod.metadata.uid.clone(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            phase: status.and_then(|s| s.phase.clone()),
            reason: status.and_then(|s| s.reason.clone()),
            deletion_timestamp: pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .and_then(|t| convert_timestamp(&t.0)),
            deletion_grace_seconds: pod.metadata.deletion_grace_period_seconds,
        }
    }
}

/// k8s-openapi's jiff is another major version than this crate's.
fn convert_timestamp(t: &k8s_openapi::jiff::Timestamp) -> Option<Timestamp> {
    Timestamp::new(t.as_second(), t.subsec_nanosecond()).ok()
}

/// Why a handle is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// The handle records no pod (namespace or pod name missing): made by hand with
    /// `tessera ipam assign`, or by a runtime outside Kubernetes. Never collected.
    NoPod,
    /// The handle holds a network's gateway addresses. Never collected.
    Gateway,
    /// Its pod exists and runs where the handle says.
    Live,
    /// Its pod is Terminating and may still use the address until this time.
    Terminating {
        /// deletionTimestamp plus the pod's grace period.
        until: Timestamp,
    },
}

/// How a finished pod ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Phase `Succeeded`.
    Succeeded,
    /// Phase `Failed`, other than an eviction.
    Failed,
    /// Phase `Failed` with reason `Evicted`.
    Evicted,
}

impl Finish {
    /// The finish of a pod in `phase` with `reason`, if it has finished.
    fn of(phase: Option<&str>, reason: Option<&str>) -> Option<Self> {
        match (phase?, reason) {
            ("Succeeded", _) => Some(Finish::Succeeded),
            ("Failed", Some("Evicted")) => Some(Finish::Evicted),
            ("Failed", _) => Some(Finish::Failed),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Finish::Succeeded => "Succeeded",
            Finish::Failed => "Failed",
            Finish::Evicted => "Evicted",
        }
    }
}

/// Why a handle is leaked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeakReason {
    /// No pod of the recorded namespace and name exists.
    PodGone,
    /// A pod of that name exists, but it is another one (another UID): a StatefulSet pod or a
    /// pod deleted and created again.
    OtherUid {
        /// The UID of the pod that exists now.
        pod_uid: String,
    },
    /// A pod of that name exists on another node.
    OtherNode {
        /// The node it runs on.
        pod_node: String,
    },
    /// The pod has finished; its containers no longer use the address.
    Finished {
        /// How it ended.
        phase: Finish,
    },
    /// The node the address was assigned on is gone from the cluster.
    NodeGone,
}

impl LeakReason {
    /// The value of the `reason` label of the release counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeakReason::PodGone => "pod_gone",
            LeakReason::OtherUid { .. } => "other_uid",
            LeakReason::OtherNode { .. } => "other_node",
            LeakReason::Finished { .. } => "finished",
            LeakReason::NodeGone => "node_gone",
        }
    }
}

impl fmt::Display for LeakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeakReason::PodGone => f.write_str("its pod no longer exists"),
            LeakReason::OtherUid { pod_uid } => write!(
                f,
                "its pod was replaced by another of the same name (uid {pod_uid})"
            ),
            LeakReason::OtherNode { pod_node } => {
                write!(f, "a pod of that name now runs on node {pod_node}")
            }
            LeakReason::Finished { phase } => {
                write!(f, "its pod has finished ({})", phase.as_str())
            }
            LeakReason::NodeGone => f.write_str("its node is gone from the cluster"),
        }
    }
}

/// The verdict on one handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not to be released.
    Keep(KeepReason),
    /// A candidate for release (after the grace period and a fresh look at the pod).
    Leaked(LeakReason),
}

/// Judges the handle recorded with `attrs`, given the pod of its recorded namespace and name
/// (`None`: no such pod), whether its recorded node exists, and the time.
///
/// Handles without pod attributes and gateway handles are always kept. A gone node leaks
/// every pod handle on it. A record with a UID names one pod; a record without (written by an
/// older version, or by a runtime that does not send `K8S_POD_UID`) is judged by name and
/// node only. A Terminating pod keeps its address until its deletionTimestamp plus its grace
/// period; after that the other rules decide, so a pod stuck Terminating that still runs
/// (its node cut off, say) keeps it until it has finished or is gone.
pub fn judge(
    attrs: &Attributes,
    pod: Option<&PodFacts>,
    node_exists: bool,
    now: Timestamp,
) -> Verdict {
    if attrs.gateway_of.is_some() {
        return Verdict::Keep(KeepReason::Gateway);
    }
    if attrs.namespace.is_none() || attrs.pod.is_none() {
        return Verdict::Keep(KeepReason::NoPod);
    }
    if attrs.node.is_some() && !node_exists {
        return Verdict::Leaked(LeakReason::NodeGone);
    }
    let Some(pod) = pod else {
        return Verdict::Leaked(LeakReason::PodGone);
    };
    if let (Some(recorded), Some(current)) = (&attrs.pod_uid, &pod.uid) {
        if recorded != current {
            return Verdict::Leaked(LeakReason::OtherUid {
                pod_uid: current.clone(),
            });
        }
    }
    // An unscheduled pod has no node yet: it cannot be told apart by node, so it is kept.
    if let (Some(recorded), Some(current)) = (&attrs.node, &pod.node_name) {
        if recorded != current {
            return Verdict::Leaked(LeakReason::OtherNode {
                pod_node: current.clone(),
            });
        }
    }
    if let Some(until) = termination_deadline(pod).filter(|until| now < *until) {
        return Verdict::Keep(KeepReason::Terminating { until });
    }
    match Finish::of(pod.phase.as_deref(), pod.reason.as_deref()) {
        Some(phase) => Verdict::Leaked(LeakReason::Finished { phase }),
        None => Verdict::Keep(KeepReason::Live),
    }
}

/// deletionTimestamp plus the grace period, for a Terminating pod.
fn termination_deadline(pod: &PodFacts) -> Option<Timestamp> {
    let deleted = pod.deletion_timestamp?;
    let grace = jiff::SignedDuration::from_secs(pod.deletion_grace_seconds.unwrap_or(0).max(0));
    Some(deleted.checked_add(grace).unwrap_or(Timestamp::MAX))
}

/// A leaked handle whose time has come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The handle id.
    pub handle_id: String,
    /// The attributes it was judged on; the release compares them with the stored record.
    pub attrs: Attributes,
    /// Why it is leaked.
    pub reason: LeakReason,
    /// When this process first saw it leaked.
    pub since: Timestamp,
}

#[derive(Clone, Debug)]
struct Candidate {
    attrs: Attributes,
    reason: LeakReason,
    since: Timestamp,
}

/// Remembers since when each handle has been seen leaked, so that one is released only
/// after it has stayed leaked for the whole grace period.
///
/// The memory is this process's alone: a controller that restarts starts with an empty
/// tracker, so nothing is released before a full grace period has passed in the new process.
/// That is the rule that keeps caches that are stale just after a restart (a pod list taken
/// before a pod was created, a watch not caught up) from freeing live addresses; a stale
/// verdict does not survive a grace period of passes. A handle rewritten since it was first
/// seen (other attributes: the handle id was reused) starts over.
#[derive(Clone, Debug, Default)]
pub struct LeakTracker {
    candidates: HashMap<String, Candidate>,
}

impl LeakTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the verdict on `handle_id`, judged on `attrs`, at `now`. A kept handle is
    /// dropped; a leaked one keeps its first sighting while its attributes stay the same.
    pub fn observe(
        &mut self,
        handle_id: &str,
        attrs: &Attributes,
        verdict: &Verdict,
        now: Timestamp,
    ) {
        let Verdict::Leaked(reason) = verdict else {
            self.candidates.remove(handle_id);
            return;
        };
        match self.candidates.get_mut(handle_id) {
            Some(known) if known.attrs == *attrs => known.reason = reason.clone(),
            _ => {
                self.candidates.insert(
                    handle_id.to_string(),
                    Candidate {
                        attrs: attrs.clone(),
                        reason: reason.clone(),
                        since: now,
                    },
                );
            }
        }
    }

    /// The candidates due at `now`, oldest first, at most `cap`: those seen leaked for at
    /// least `grace`, and those whose node is gone at once. A zero `grace` turns collection
    /// off, except for gone nodes.
    pub fn due(&self, now: Timestamp, grace: Duration, cap: usize) -> Vec<Due> {
        let mut due: Vec<Due> = self
            .candidates
            .iter()
            .filter(|(_, c)| is_due(c, now, grace))
            .map(|(id, c)| Due {
                handle_id: id.clone(),
                attrs: c.attrs.clone(),
                reason: c.reason.clone(),
                since: c.since,
            })
            .collect();
        due.sort_by(|a, b| a.since.cmp(&b.since).then(a.handle_id.cmp(&b.handle_id)));
        due.truncate(cap);
        due
    }

    /// Drops a handle (released, or no longer in the datastore).
    pub fn forget(&mut self, handle_id: &str) {
        self.candidates.remove(handle_id);
    }

    /// Drops every handle `seen` refuses: those a full pass no longer found in the datastore.
    pub fn retain_seen(&mut self, seen: impl Fn(&str) -> bool) {
        self.candidates.retain(|id, _| seen(id));
    }

    /// How many handles are seen leaked now (the candidates gauge).
    pub fn candidates(&self) -> usize {
        self.candidates.len()
    }
}

fn is_due(candidate: &Candidate, now: Timestamp, grace: Duration) -> bool {
    if candidate.reason == LeakReason::NodeGone {
        return true;
    }
    if grace.is_zero() {
        return false;
    }
    let Ok(grace) = jiff::SignedDuration::try_from(grace) else {
        return false;
    };
    candidate
        .since
        .checked_add(grace)
        .is_ok_and(|deadline| now >= deadline)
}
