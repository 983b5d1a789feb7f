//! Which allocations are leaked, and when one may be released, without I/O.
//!
//! The failure users of Calico, Spiderpool and Whereabouts report most is not a leak but the
//! opposite: a garbage collector freeing the address of a live pod. So every rule here errs
//! on keeping: [`judge`] calls a handle leaked only on positive evidence (its pod is gone, is
//! another pod of the same name, runs elsewhere or has finished; or its node is gone and no
//! live pod claims the handle), and [`LeakTracker`] lets a leaked handle go only after it has
//! been seen leaked for a whole grace period by this process. The caller adds the last two
//! locks: a fresh GET of the pod right before the release, and a release that compares the
//! handle record it judged ([`crate::datastore::Datastore::release_if_unchanged`]).

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
    /// Held for a StatefulSet pod's name while the StatefulSet exists and the pod's ordinal
    /// is within its replicas, whatever became of the pod (see [`crate::sticky`]).
    StatefulSet,
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
    /// The StatefulSet the address was held for is gone, and so is its pod.
    StatefulSetGone {
        /// The StatefulSet's name.
        statefulset: String,
    },
    /// The StatefulSet scaled below the pod's ordinal, and the pod is gone.
    ScaledDown {
        /// The StatefulSet's name.
        statefulset: String,
        /// Its replicas now.
        replicas: i32,
    },
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
            LeakReason::StatefulSetGone { .. } => "statefulset_gone",
            LeakReason::ScaledDown { .. } => "statefulset_scaled_down",
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
            LeakReason::StatefulSetGone { statefulset } => {
                write!(f, "its StatefulSet {statefulset} was deleted")
            }
            LeakReason::ScaledDown {
                statefulset,
                replicas,
            } => write!(
                f,
                "its StatefulSet {statefulset} scaled down to {replicas} replica(s), below the \
                 pod's ordinal"
            ),
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
/// Handles without pod attributes and gateway handles are always kept. A record with a UID
/// names one pod; a record without (written by an older version, or by a runtime that does
/// not send `K8S_POD_UID`) is judged by name and node only. Handles are per container, so a
/// StatefulSet pod recreated under its name holds a new handle: the old one is leaked
/// ([`LeakReason::OtherUid`]), the new one is its own.
///
/// The handle's own pod, live, keeps it even when its node is missing from `node_exists`'s
/// source (a node cache that has not seen a new node yet); a node that is really gone is
/// cleaned up when its deletion is confirmed, and meanwhile leaks the handles no live pod
/// claims. A Terminating pod keeps its address until its deletionTimestamp plus its grace
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
    match pod.map(|pod| (pod, other_pod(attrs, pod))) {
        Some((pod, None)) => judge_own_pod(pod, now),
        _ if attrs.node.is_some() && !node_exists => Verdict::Leaked(LeakReason::NodeGone),
        Some((_, Some(other))) => Verdict::Leaked(other),
        None => Verdict::Leaked(LeakReason::PodGone),
    }
}

/// Why `pod` is not the pod the handle was assigned to, if it is not.
fn other_pod(attrs: &Attributes, pod: &PodFacts) -> Option<LeakReason> {
    if let (Some(recorded), Some(current)) = (&attrs.pod_uid, &pod.uid) {
        if recorded != current {
            return Some(LeakReason::OtherUid {
                pod_uid: current.clone(),
            });
        }
    }
    // An unscheduled pod has no node yet: it cannot be told apart by node.
    match (&attrs.node, &pod.node_name) {
        (Some(recorded), Some(current)) if recorded != current => Some(LeakReason::OtherNode {
            pod_node: current.clone(),
        }),
        _ => None,
    }
}

/// The verdict on a handle whose own pod exists.
fn judge_own_pod(pod: &PodFacts, now: Timestamp) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(15 * 60);

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn attrs(pod: &str, uid: Option<&str>, node: &str) -> Attributes {
        Attributes {
            namespace: Some("default".into()),
            pod: Some(pod.into()),
            pod_uid: uid.map(str::to_string),
            node: Some(node.into()),
            interface: Some("eth0".into()),
            container_id: Some(format!("cid-{pod}-{}", uid.unwrap_or("none"))),
            gateway_of: None,
            statefulset: None,
        }
    }

    fn running(uid: &str, node: &str) -> PodFacts {
        PodFacts {
            uid: Some(uid.into()),
            node_name: Some(node.into()),
            phase: Some("Running".into()),
            ..Default::default()
        }
    }

    fn leaked(reason: LeakReason) -> Verdict {
        Verdict::Leaked(reason)
    }

    #[test]
    fn from_pod_reads_every_fact() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "default", "uid": "u1",
                         "deletionTimestamp": "2027-01-15T08:00:00Z",
                         "deletionGracePeriodSeconds": 30},
            "spec": {"nodeName": "worker-1", "containers": []},
            "status": {"phase": "Failed", "reason": "Evicted"}
        }))
        .unwrap();
        let facts = PodFacts::from_pod(&pod);
        assert_eq!(facts.uid.as_deref(), Some("u1"));
        assert_eq!(facts.node_name.as_deref(), Some("worker-1"));
        assert_eq!(facts.phase.as_deref(), Some("Failed"));
        assert_eq!(facts.reason.as_deref(), Some("Evicted"));
        assert_eq!(
            facts.deletion_timestamp,
            Some("2027-01-15T08:00:00Z".parse().unwrap())
        );
        assert_eq!(facts.deletion_grace_seconds, Some(30));
        assert_eq!(PodFacts::from_pod(&Pod::default()), PodFacts::default());
    }

    #[test]
    fn a_live_pod_keeps_its_handle() {
        let a = attrs("web-0", Some("u1"), "n1");
        assert_eq!(
            judge(&a, Some(&running("u1", "n1")), true, t(0)),
            Verdict::Keep(KeepReason::Live)
        );
    }

    #[test]
    fn handles_made_by_hand_and_gateway_handles_are_never_leaked() {
        let by_hand = Attributes {
            node: Some("n1".into()),
            ..Default::default()
        };
        let only_pod = Attributes {
            pod: Some("web-0".into()),
            node: Some("n1".into()),
            ..Default::default()
        };
        let gateway = Attributes {
            gateway_of: Some("k8s-pod-network".into()),
            ..attrs("web-0", None, "n1")
        };
        for node_exists in [true, false] {
            assert_eq!(
                judge(&by_hand, None, node_exists, t(0)),
                Verdict::Keep(KeepReason::NoPod)
            );
            assert_eq!(
                judge(&only_pod, None, node_exists, t(0)),
                Verdict::Keep(KeepReason::NoPod)
            );
            assert_eq!(
                judge(&gateway, None, node_exists, t(0)),
                Verdict::Keep(KeepReason::Gateway)
            );
        }
    }

    #[test]
    fn a_gone_pod_leaks_its_handle() {
        let a = attrs("web-0", Some("u1"), "n1");
        assert_eq!(judge(&a, None, true, t(0)), leaked(LeakReason::PodGone));
    }

    #[test]
    fn a_gone_node_leaks_its_pod_handles() {
        let a = attrs("web-0", Some("u1"), "n1");
        assert_eq!(judge(&a, None, false, t(0)), leaked(LeakReason::NodeGone));
        let replaced = running("u2", "n2");
        assert_eq!(
            judge(&a, Some(&replaced), false, t(0)),
            leaked(LeakReason::NodeGone)
        );
    }

    /// A node created a moment ago may be missing from the node cache while its first pods
    /// already hold addresses: a live pod's word wins over the cache's, and a node that is
    /// really gone is cleaned up when its deletion is confirmed.
    #[test]
    fn a_live_pod_keeps_its_handle_on_a_node_the_cache_does_not_know_yet() {
        let a = attrs("web-0", Some("u1"), "n-new");
        let pod = running("u1", "n-new");
        assert_eq!(
            judge(&a, Some(&pod), false, t(0)),
            Verdict::Keep(KeepReason::Live)
        );
        let finished = PodFacts {
            phase: Some("Succeeded".into()),
            ..pod
        };
        assert_eq!(
            judge(&a, Some(&finished), false, t(0)),
            leaked(LeakReason::Finished {
                phase: Finish::Succeeded
            })
        );
    }

    #[test]
    fn a_statefulset_pod_recreated_with_a_new_uid_leaks_the_old_handle_only() {
        let old = attrs("web-0", Some("u1"), "n1");
        let new = attrs("web-0", Some("u2"), "n1");
        let pod = running("u2", "n1");
        assert_eq!(
            judge(&old, Some(&pod), true, t(0)),
            leaked(LeakReason::OtherUid {
                pod_uid: "u2".into()
            })
        );
        assert_eq!(
            judge(&new, Some(&pod), true, t(0)),
            Verdict::Keep(KeepReason::Live)
        );
    }

    #[test]
    fn a_record_without_uid_is_judged_by_name_and_node() {
        let a = attrs("web-0", None, "n1");
        assert_eq!(
            judge(&a, Some(&running("u9", "n1")), true, t(0)),
            Verdict::Keep(KeepReason::Live)
        );
        assert_eq!(
            judge(&a, Some(&running("u9", "n2")), true, t(0)),
            leaked(LeakReason::OtherNode {
                pod_node: "n2".into()
            })
        );
        assert_eq!(judge(&a, None, true, t(0)), leaked(LeakReason::PodGone));
    }

    #[test]
    fn a_pod_not_scheduled_yet_is_not_told_apart_by_node() {
        let a = attrs("web-0", None, "n1");
        let pending = PodFacts {
            uid: Some("u2".into()),
            phase: Some("Pending".into()),
            ..Default::default()
        };
        assert_eq!(
            judge(&a, Some(&pending), true, t(0)),
            Verdict::Keep(KeepReason::Live)
        );
    }

    #[test]
    fn finished_pods_leak_their_handles() {
        let a = attrs("job-1", Some("u1"), "n1");
        for (phase, reason, finish) in [
            ("Succeeded", None, Finish::Succeeded),
            ("Failed", None, Finish::Failed),
            ("Failed", Some("Evicted"), Finish::Evicted),
        ] {
            let pod = PodFacts {
                phase: Some(phase.into()),
                reason: reason.map(str::to_string),
                ..running("u1", "n1")
            };
            let verdict = judge(&a, Some(&pod), true, t(0));
            assert_eq!(verdict, leaked(LeakReason::Finished { phase: finish }));
        }
        let unknown = PodFacts {
            phase: Some("Unknown".into()),
            ..running("u1", "n1")
        };
        assert_eq!(
            judge(&a, Some(&unknown), true, t(0)),
            Verdict::Keep(KeepReason::Live)
        );
    }

    #[test]
    fn a_terminating_pod_keeps_its_handle_until_deletion_plus_grace() {
        let a = attrs("web-0", Some("u1"), "n1");
        let terminating = PodFacts {
            deletion_timestamp: Some(t(100)),
            deletion_grace_seconds: Some(30),
            phase: Some("Succeeded".into()),
            ..running("u1", "n1")
        };
        assert_eq!(
            judge(&a, Some(&terminating), true, t(129)),
            Verdict::Keep(KeepReason::Terminating { until: t(130) })
        );
        assert_eq!(
            judge(&a, Some(&terminating), true, t(130)),
            leaked(LeakReason::Finished {
                phase: Finish::Succeeded
            })
        );
        // Stuck Terminating and still running (its node cut off): kept.
        let stuck = PodFacts {
            phase: Some("Running".into()),
            ..terminating
        };
        assert_eq!(
            judge(&a, Some(&stuck), true, t(10_000)),
            Verdict::Keep(KeepReason::Live)
        );
    }

    #[test]
    fn another_pods_termination_does_not_protect_an_old_handle() {
        let old = attrs("web-0", Some("u1"), "n1");
        let terminating = PodFacts {
            deletion_timestamp: Some(t(100)),
            deletion_grace_seconds: Some(30),
            ..running("u2", "n1")
        };
        assert_eq!(
            judge(&old, Some(&terminating), true, t(0)),
            leaked(LeakReason::OtherUid {
                pod_uid: "u2".into()
            })
        );
    }

    #[test]
    fn reasons_read_well_in_logs_and_metrics() {
        let reasons = [
            (LeakReason::PodGone, "pod_gone", "its pod no longer exists"),
            (
                LeakReason::OtherUid {
                    pod_uid: "u2".into(),
                },
                "other_uid",
                "its pod was replaced by another of the same name (uid u2)",
            ),
            (
                LeakReason::OtherNode {
                    pod_node: "n2".into(),
                },
                "other_node",
                "a pod of that name now runs on node n2",
            ),
            (
                LeakReason::Finished {
                    phase: Finish::Evicted,
                },
                "finished",
                "its pod has finished (Evicted)",
            ),
            (
                LeakReason::NodeGone,
                "node_gone",
                "its node is gone from the cluster",
            ),
        ];
        for (reason, label, text) in reasons {
            assert_eq!(reason.metric_label(), label);
            assert_eq!(reason.to_string(), text);
        }
    }

    fn ids(due: &[Due]) -> Vec<&str> {
        due.iter().map(|d| d.handle_id.as_str()).collect()
    }

    #[test]
    fn a_leaked_handle_is_due_only_after_the_grace_period() {
        let mut tracker = LeakTracker::new();
        let a = attrs("web-0", Some("u1"), "n1");
        let verdict = leaked(LeakReason::PodGone);
        tracker.observe("h1", &a, &verdict, t(0));
        tracker.observe("h1", &a, &verdict, t(600));
        assert!(tracker.due(t(899), GRACE, 10).is_empty());
        let due = tracker.due(t(900), GRACE, 10);
        assert_eq!(
            due,
            [Due {
                handle_id: "h1".into(),
                attrs: a,
                reason: LeakReason::PodGone,
                since: t(0),
            }]
        );
        assert_eq!(tracker.candidates(), 1);
    }

    #[test]
    fn a_handle_seen_kept_again_starts_over() {
        let mut tracker = LeakTracker::new();
        let a = attrs("web-0", Some("u1"), "n1");
        tracker.observe("h1", &a, &leaked(LeakReason::PodGone), t(0));
        tracker.observe("h1", &a, &Verdict::Keep(KeepReason::Live), t(300));
        assert_eq!(tracker.candidates(), 0);
        tracker.observe("h1", &a, &leaked(LeakReason::PodGone), t(600));
        assert!(tracker.due(t(1200), GRACE, 10).is_empty());
        assert_eq!(ids(&tracker.due(t(1500), GRACE, 10)), ["h1"]);
    }

    #[test]
    fn a_handle_rewritten_since_first_seen_starts_over() {
        let mut tracker = LeakTracker::new();
        let old = attrs("web-0", Some("u1"), "n1");
        let new = attrs("web-1", Some("u5"), "n1");
        tracker.observe("h1", &old, &leaked(LeakReason::PodGone), t(0));
        tracker.observe("h1", &new, &leaked(LeakReason::PodGone), t(600));
        assert!(tracker.due(t(900), GRACE, 10).is_empty());
        let due = tracker.due(t(1500), GRACE, 10);
        assert_eq!(due[0].attrs, new);
        assert_eq!(due[0].since, t(600));
    }

    #[test]
    fn a_gone_node_is_due_at_once_even_when_collection_is_off() {
        let mut tracker = LeakTracker::new();
        tracker.observe(
            "on-gone-node",
            &attrs("web-0", Some("u1"), "n1"),
            &leaked(LeakReason::NodeGone),
            t(0),
        );
        tracker.observe(
            "pod-gone",
            &attrs("web-1", Some("u2"), "n2"),
            &leaked(LeakReason::PodGone),
            t(0),
        );
        assert_eq!(ids(&tracker.due(t(0), GRACE, 10)), ["on-gone-node"]);
        // Grace 0 turns the rest off, however long they have been leaked.
        assert_eq!(
            ids(&tracker.due(t(1_000_000), Duration::ZERO, 10)),
            ["on-gone-node"]
        );
    }

    #[test]
    fn due_is_oldest_first_and_capped() {
        let mut tracker = LeakTracker::new();
        for (i, id) in ["c", "a", "d", "b"].iter().enumerate() {
            let a = attrs(id, None, "n1");
            tracker.observe(id, &a, &leaked(LeakReason::PodGone), t(i as i64 * 10));
        }
        assert_eq!(ids(&tracker.due(t(10_000), GRACE, 2)), ["c", "a"]);
        assert_eq!(
            ids(&tracker.due(t(10_000), GRACE, 10)),
            ["c", "a", "d", "b"]
        );
        assert!(tracker.due(t(10_000), GRACE, 0).is_empty());
    }

    #[test]
    fn forgotten_and_unseen_handles_are_dropped() {
        let mut tracker = LeakTracker::new();
        for id in ["h1", "h2", "h3"] {
            let a = attrs(id, None, "n1");
            tracker.observe(id, &a, &leaked(LeakReason::PodGone), t(0));
        }
        tracker.forget("h1");
        tracker.retain_seen(|id| id != "h2");
        assert_eq!(ids(&tracker.due(t(10_000), GRACE, 10)), ["h3"]);
        assert_eq!(tracker.candidates(), 1);
    }

    /// A pod created after the pod list was taken: the cache says gone, the fresh GET before
    /// the release finds it, and it is kept (and dropped from the candidates).
    #[test]
    fn a_pod_missing_from_a_stale_list_is_kept_after_the_fresh_get() {
        let mut tracker = LeakTracker::new();
        let a = attrs("web-7", Some("u7"), "n1");
        let from_cache = judge(&a, None, true, t(0));
        assert_eq!(from_cache, leaked(LeakReason::PodGone));
        tracker.observe("h7", &a, &from_cache, t(0));
        assert_eq!(ids(&tracker.due(t(900), GRACE, 10)), ["h7"]);
        let fresh = running("u7", "n1");
        let verdict = judge(&a, Some(&fresh), true, t(900));
        assert_eq!(verdict, Verdict::Keep(KeepReason::Live));
        tracker.observe("h7", &a, &verdict, t(900));
        assert!(tracker.due(t(100_000), GRACE, 10).is_empty());
    }

    /// A restarted controller starts with an empty tracker: whatever its first, possibly
    /// stale, pass says, nothing is due before a full grace period in the new process.
    #[test]
    fn a_restarted_controller_releases_nothing_before_a_full_grace_period() {
        let a = attrs("web-0", Some("u1"), "n1");
        let verdict = leaked(LeakReason::PodGone);
        let mut before = LeakTracker::new();
        before.observe("h1", &a, &verdict, t(0));
        assert_eq!(ids(&before.due(t(850), GRACE, 10)), Vec::<&str>::new());
        // Restart at 850 s: the old tracker is lost.
        let mut after = LeakTracker::new();
        after.observe("h1", &a, &verdict, t(860));
        assert!(after.due(t(900), GRACE, 10).is_empty());
        assert!(after.due(t(1759), GRACE, 10).is_empty());
        assert_eq!(ids(&after.due(t(1760), GRACE, 10)), ["h1"]);
    }
}
