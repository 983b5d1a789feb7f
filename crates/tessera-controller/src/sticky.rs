//! StatefulSet pods keep their addresses: which held addresses garbage collection keeps, and
//! the watch of StatefulSets it judges them by.
//!
//! While `enableStatefulSet` is on, the CNI plugin names a StatefulSet pod's handle after the
//! pod and leaves it in place when the pod is deleted, so the pod created again under its name
//! takes the addresses back (see `tessera_core::ipam::Ipam::assign_new`); with it off, the
//! pod's handle records no StatefulSet. Such a handle ([`Attributes::statefulset`]) is
//! never a leak candidate while its StatefulSet exists and the pod's ordinal is within the
//! replicas, whatever became of the pod: gone, another UID (the pod was created again,
//! Spiderpool issues 2442 and 2526), another node or finished. Once the StatefulSet is
//! deleted or scales below the ordinal, the usual rules decide (a Terminating pod keeps its
//! address until it is gone), and the release names the StatefulSet as the reason.

use std::fmt::Debug;
use std::pin::pin;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tessera_core::ipam::Attributes;

use crate::gc::{self, KeepReason, LeakReason, PodFacts, Verdict};
use crate::run::{Context, Error};

/// What the rules need to know of a StatefulSet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetFacts {
    /// `spec.replicas` (1 when unset, as the API server defaults it).
    pub replicas: i32,
    /// `spec.ordinals.start`: the first ordinal (0 when unset).
    pub start: i32,
}

impl SetFacts {
    /// The facts of a StatefulSet as the API server returned it.
    pub fn from_set(set: &StatefulSet) -> Self {
        let spec = set.spec.as_ref();
        Self {
            replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
            start: spec
                .and_then(|s| s.ordinals.as_ref())
                .and_then(|o| o.start)
                .unwrap_or(0),
        }
    }

    /// Whether the StatefulSet keeps a pod of ordinal `ordinal`.
    pub fn keeps(&self, ordinal: i32) -> bool {
        ordinal >= self.start && ordinal - self.start < self.replicas
    }
}

/// The ordinal of pod `pod` of StatefulSet `set`: the number after `<set>-`, written as the
/// StatefulSet controller writes it (decimal, no sign, no leading zero).
pub fn ordinal(pod: &str, set: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    let canonical = digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.is_empty()
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// Why the StatefulSet no longer holds the handle recorded with `attrs` for StatefulSet
/// `name`, given what exists of it (`None`: deleted), or `None` while it does.
pub fn released_why(attrs: &Attributes, name: &str, set: Option<&SetFacts>) -> Option<LeakReason> {
    let statefulset = name.to_string();
    let Some(set) = set else {
        return Some(LeakReason::StatefulSetGone { statefulset });
    };
    let ordinal = attrs.pod.as_deref().and_then(|pod| ordinal(pod, name));
    match ordinal {
        Some(n) if set.keeps(n) => None,
        _ => Some(LeakReason::ScaledDown {
            statefulset,
            replicas: set.replicas,
        }),
    }
}

/// [`gc::judge`] for every handle, StatefulSet pods' held addresses included: `set` is the
/// StatefulSet the handle names, as it exists (`None`: deleted; ignored for other handles).
pub fn judge(
    attrs: &Attributes,
    set: Option<&SetFacts>,
    pod: Option<&PodFacts>,
    node_exists: bool,
    now: Timestamp,
) -> Verdict {
    let Some(name) = attrs.statefulset.as_deref() else {
        return gc::judge(attrs, pod, node_exists, now);
    };
    let Some(why) = released_why(attrs, name, set) else {
        return Verdict::Keep(KeepReason::StatefulSet);
    };
    match gc::judge(attrs, pod, node_exists, now) {
        Verdict::Leaked(_) => Verdict::Leaked(why),
        keep => keep,
    }
}

/// The StatefulSet the handle recorded with `attrs` names, from the watch's cache.
pub fn cached_set(sets: &reflector::Store<StatefulSet>, attrs: &Attributes) -> Option<SetFacts> {
    let (namespace, name) = (attrs.namespace.as_deref()?, attrs.statefulset.as_deref()?);
    let set = sets.get(&ObjectRef::new(name).within(namespace))?;
    Some(SetFacts::from_set(&set))
}

/// The StatefulSet the handle recorded with `attrs` names, read fresh before a release.
pub async fn fresh_set(ctx: &Context, attrs: &Attributes) -> Result<Option<SetFacts>, Error> {
    let (Some(namespace), Some(name)) = (attrs.namespace.as_deref(), attrs.statefulset.as_deref())
    else {
        return Ok(None);
    };
    let sets = Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace);
    Ok(sets.get_opt(name).await?.map(|s| SetFacts::from_set(&s)))
}

/// Keeps `writer`'s cache of every StatefulSet; failed watches restart with backoff. Scaling
/// down and deletion reach garbage collection through the pod deletions they cause.
pub async fn watch(ctx: &Context, writer: reflector::store::Writer<StatefulSet>) {
    let sets = Api::<StatefulSet>::all(ctx.client.clone());
    let mut events = pin!(watcher::watcher(sets, watcher::Config::default())
        .default_backoff()
        .modify(|set: &mut StatefulSet| {
            set.managed_fields_mut().clear();
            set.status = None;
        })
        .reflect(writer));
    while let Some(event) = events.next().await {
        if let Err(source) = event {
            let error = Error::Watch {
                kind: "statefulsets",
                source,
            };
            tracing::warn!("watching statefulsets: {error}");
            ctx.metrics.count_error(error.metric_label());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn web(pod: &str, uid: &str) -> Attributes {
        Attributes {
            namespace: Some("db".into()),
            pod: Some(pod.into()),
            pod_uid: Some(uid.into()),
            node: Some("node-a".into()),
            statefulset: Some("web".into()),
            ..Default::default()
        }
    }

    fn replicas(n: i32) -> SetFacts {
        SetFacts {
            replicas: n,
            start: 0,
        }
    }

    fn running(uid: &str) -> PodFacts {
        PodFacts {
            uid: Some(uid.into()),
            node_name: Some("node-b".into()),
            phase: Some("Running".into()),
            ..Default::default()
        }
    }

    #[test]
    fn ordinals_are_read_as_the_statefulset_controller_writes_them() {
        assert_eq!(ordinal("web-0", "web"), Some(0));
        assert_eq!(ordinal("web-12", "web"), Some(12));
        assert_eq!(ordinal("web-x-1", "web-x"), Some(1));
        for bad in [
            "web",
            "web-",
            "web-01",
            "web-+1",
            "web-1a",
            "webb-1",
            "web-99999999999",
        ] {
            assert_eq!(ordinal(bad, "web"), None, "{bad}");
        }
        let from_two = SetFacts {
            replicas: 2,
            start: 2,
        };
        assert!(!from_two.keeps(1) && from_two.keeps(2) && from_two.keeps(3));
        assert!(!from_two.keeps(4));
    }

    #[test]
    fn a_held_address_is_never_a_candidate_while_the_ordinal_is_within_the_replicas() {
        let attrs = web("web-1", "uid-1");
        let set = replicas(2);
        // Pod gone, replaced by another uid on another node (Spiderpool issues 2442, 2526),
        // finished, or its node gone: kept all the same.
        let finished = PodFacts {
            phase: Some("Failed".into()),
            ..running("uid-1")
        };
        for pod in [None, Some(running("uid-2")), Some(finished)] {
            for node_exists in [true, false] {
                assert_eq!(
                    judge(&attrs, Some(&set), pod.as_ref(), node_exists, t()),
                    Verdict::Keep(KeepReason::StatefulSet),
                    "{pod:?}"
                );
            }
        }
        // Without the StatefulSet mark, the same handle is an ordinal leak.
        let plain = Attributes {
            statefulset: None,
            ..attrs
        };
        assert_eq!(
            judge(&plain, Some(&set), None, true, t()),
            Verdict::Leaked(LeakReason::PodGone)
        );
    }

    #[test]
    fn scaled_down_or_deleted_the_address_goes_once_the_pod_is_gone() {
        let attrs = web("web-2", "uid-1");
        let scaled = LeakReason::ScaledDown {
            statefulset: "web".into(),
            replicas: 2,
        };
        assert_eq!(
            judge(&attrs, Some(&replicas(2)), None, true, t()),
            Verdict::Leaked(scaled)
        );
        assert_eq!(
            judge(&attrs, None, None, true, t()),
            Verdict::Leaked(LeakReason::StatefulSetGone {
                statefulset: "web".into()
            })
        );
        // The pod still runs (it is being deleted): its address stays.
        let own = PodFacts {
            node_name: Some("node-a".into()),
            ..running("uid-1")
        };
        assert_eq!(
            judge(&attrs, Some(&replicas(2)), Some(&own), true, t()),
            Verdict::Keep(KeepReason::Live)
        );
    }
}
