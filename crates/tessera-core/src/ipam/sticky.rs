//! StatefulSet pods keep their addresses.
//!
//! A StatefulSet pod's handle is named after the pod (namespace and name) rather than its
//! container, and records the StatefulSet ([`Attributes::statefulset`]). Deleting the pod
//! leaves the handle in place: its addresses stay held for the name. When the pod is created
//! again (on any node), its ADD reads that handle in the snapshot it reads anyway and takes it
//! over: the handle's attributes are rewritten for the new pod in one transaction, and the
//! blocks, which name the handle and not the pod, are not touched.
//!
//! The new pod gets the held addresses only when they still fit: stickiness is on
//! (`IPAMConfiguration.spec.enableStatefulSet`), every address the request names is held,
//! and the other held addresses are as many as it asks for, each in a pool the pod may use now
//! (its pool annotations win). Otherwise the held addresses are released and new ones
//! allocated, as Spiderpool does.
//!
//! With stickiness off, a request that names the pod's handle
//! ([`AssignRequest::sticky_handle`]) is made to its own handle like any other pod's; the
//! setting is read in the same snapshot, so that costs nothing. A pod-named handle left while
//! it was on is released by the pod's next ADD.

use std::net::IpAddr;

use crate::keys;
use crate::store::{Compare, KeyValue, Op, Store, TxnOutcome};

use super::attachments::described;
use super::context::{Context, PoolInfo};
use super::records::{decode, encode, Attributes, HandleRecord};
use super::release::{self, Released};
use super::select::{self, Family};
use super::{handle_targets, AssignRequest, Assignment, Inputs, Ipam, IpamError};
use crate::resources::calico::{IPAMConfiguration, IPAMConfigurationSpec};

/// What an ADD did with the handle an earlier pod of the same name left.
pub(super) enum TakeOver {
    /// Not an earlier pod's handle: this attachment's own (a retried ADD) or another pod's.
    NotEarlier,
    /// The new pod holds the addresses now.
    Kept(Assignment, Box<Context>),
    /// The addresses no longer fit and were released, for this reason; the ADD starts over.
    Released(Vec<IpAddr>, String),
    /// A compare failed; the ADD starts over.
    Conflict,
}

/// Whether StatefulSet pods keep their addresses under the configuration records `config`
/// (IPAMConfiguration `enableStatefulSet`, on when unset).
pub(super) fn stickiness_on(config: &[KeyValue]) -> Result<bool, IpamError> {
    Ok(match config.iter().find(|kv| kv.key == keys::IPAM_CONFIG) {
        Some(kv) => decode::<IPAMConfiguration>(kv)?.spec.enable_stateful_set,
        None => IPAMConfigurationSpec::default().enable_stateful_set,
    })
}

/// `req` as made under a configuration with stickiness `on`: to its pod-named handle when on,
/// else to its own handle without the StatefulSet (see [`AssignRequest::sticky_handle`]).
/// The other of the two handles is returned too: it must not exist for the assignment.
pub(super) fn resolve(req: &AssignRequest, on: bool) -> (AssignRequest, Option<String>) {
    let Some(sticky) = &req.sticky_handle else {
        return (req.clone(), None);
    };
    let mut resolved = AssignRequest {
        sticky_handle: None,
        ..req.clone()
    };
    if on {
        resolved.handle = sticky.clone();
        (resolved, Some(req.handle.clone()))
    } else {
        resolved.attrs.statefulset = None;
        (resolved, Some(sticky.clone()))
    }
}

/// Whether `held` was recorded for an earlier pod of the StatefulSet pod `new` asks for:
/// same namespace, name and StatefulSet, another container.
pub fn is_earlier_pod(held: &Attributes, new: &Attributes) -> bool {
    new.statefulset.is_some()
        && held.statefulset == new.statefulset
        && held.namespace == new.namespace
        && held.pod == new.pod
        && held.container_id != new.container_id
}

/// Why the held addresses `held` do not fit request `req` in `ctx`, if they do not.
pub fn misfit(held: &[IpAddr], req: &AssignRequest, ctx: &Context) -> Option<String> {
    if !ctx.config.enable_stateful_set {
        return Some("IPAMConfiguration enableStatefulSet is false".into());
    }
    if let Some(ip) = req.ips.iter().find(|ip| !held.contains(ip)) {
        return Some(format!("the pod now asks for {ip}, which it does not hold"));
    }
    if let Some((ip, name)) = held
        .iter()
        .find_map(|ip| Some((ip, ctx.reservation_of(*ip)?)))
    {
        return Some(format!("{ip} is reserved by {name:?} now"));
    }
    for (family, count) in [(Family::V4, req.num_v4), (Family::V6, req.num_v6)] {
        let from_pools: Vec<IpAddr> = held
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == family.is_v6() && !req.ips.contains(ip))
            .collect();
        if from_pools.len() != count as usize {
            return Some(format!(
                "the pod asks for {count} {family} address(es) from pools and holds {}",
                from_pools.len()
            ));
        }
        if count == 0 {
            continue;
        }
        let pools = match select::candidate_pools(ctx, family, &req.node, req) {
            Ok(pools) => pools,
            Err(e) => return Some(e.to_string()),
        };
        if let Some(ip) = from_pools
            .iter()
            .find(|ip| !pools.iter().any(|p| pool_holds(p, **ip)))
        {
            let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            return Some(format!(
                "{ip} is in none of the pools the pod may use now ({})",
                names.join(", ")
            ));
        }
    }
    None
}

/// Whether `ip` is one of `pool`'s addresses.
fn pool_holds(pool: &PoolInfo, ip: IpAddr) -> bool {
    match &pool.spider {
        Some(s) => s.addresses.contains(ip),
        None => pool.cidr().contains(&ip) && !pool.is_edge_address(ip),
    }
}

impl<S: Store> Ipam<S> {
    /// Hands the handle `kv`, left by an earlier pod of the StatefulSet pod `req` is for, to
    /// the new pod when its addresses still fit, else releases them. `inputs` is the
    /// snapshot `kv` was read in; `attrs` the new pod's attributes, node included.
    pub(super) fn take_over(
        &self,
        req: &AssignRequest,
        attrs: &Attributes,
        kv: &KeyValue,
        inputs: &Inputs,
    ) -> Result<TakeOver, IpamError> {
        let held: HandleRecord = decode(kv)?;
        if !is_earlier_pod(&held.attrs, attrs) {
            return Ok(TakeOver::NotEarlier);
        }
        let ctx = Context::from_records(
            &inputs.config,
            inputs.node.as_ref(),
            inputs.namespace.as_ref(),
        )?;
        let ips: Vec<IpAddr> = held.addresses.iter().map(|a| a.ip).collect();
        if let Some(why) = misfit(&ips, req, &ctx) {
            let targets = handle_targets(&held);
            return Ok(
                match release::release(&self.store, &targets, Some((&held, kv.mod_revision)), None)?
                {
                    Released::Done { ips, .. } => TakeOver::Released(ips, why),
                    Released::Conflict => TakeOver::Conflict,
                },
            );
        }
        let taken = HandleRecord {
            attrs: attrs.clone(),
            ..held
        };
        // The configuration the fit was judged on must still be the current one.
        let guard = inputs.config.iter().find(|c| c.key == keys::CONFIG_GUARD);
        let compares = [
            Compare::unchanged(kv.key.clone(), kv.mod_revision),
            match guard {
                Some(g) => Compare::unchanged(g.key.clone(), g.mod_revision),
                None => Compare::absent(keys::CONFIG_GUARD),
            },
        ];
        let put = Op::Put(kv.key.clone(), encode(&taken));
        Ok(match self.store.txn(&compares, &[put])? {
            TxnOutcome::Committed(_) => {
                let addresses = described(&taken, &ctx);
                let done = Assignment {
                    handle: taken.id,
                    addresses,
                    released_held: None,
                };
                TakeOver::Kept(done, Box::new(ctx))
            }
            TxnOutcome::Conflict => TakeOver::Conflict,
        })
    }
}
