//! Handles seen as attachments: what one (network, container, interface) holds, and every
//! attachment of a network, for plugins that name their handles after the attachment.

use crate::keys;
use crate::store::{Read, Store};

use super::assign::parse_block_key;
use super::context::Context;
use super::records::{decode, Attributes, HandleRecord};
use super::{AssignedAddress, Assignment, Ipam, IpamError};

/// A handle's addresses described as [`Ipam::assign`] would have returned them, together
/// with the configuration read in the same snapshot.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The addresses the handle holds; `None` when the handle holds nothing.
    pub held: Option<Assignment>,
    /// Who the handle was assigned to, as recorded with it; `None` when it does not exist.
    pub attrs: Option<Attributes>,
    /// Configuration, pools and reservations at the time of the read.
    pub context: Context,
}

impl<S: Store> Ipam<S> {
    /// The record of handle `id`, if it holds any address.
    pub fn handle(&self, id: &str) -> Result<Option<HandleRecord>, IpamError> {
        match self.store.get(&keys::handle(id))? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every handle whose id starts with `prefix`, in the order of their (escaped) keys.
    ///
    /// One range read over the handles; meant for garbage collection of a network's
    /// attachments, never for the allocation path.
    pub fn handles_with_prefix(&self, prefix: &str) -> Result<Vec<HandleRecord>, IpamError> {
        // Escaping is per character, so the escaped prefix is a prefix of every escaped id.
        let range = self.store.range(&keys::handle(prefix))?;
        range.iter().map(decode).collect()
    }

    /// What handle `id` holds, with each address's pool and block, read in one snapshot
    /// together with the configuration (pools, reservations).
    ///
    /// An address whose pool was deleted since reports an empty pool name and the network
    /// of its block as the pool network.
    pub fn attachment(&self, id: &str) -> Result<Attachment, IpamError> {
        let snap = self.store.read(&[
            Read::Get(keys::handle(id)),
            Read::Prefix(keys::CONFIG_PREFIX.into()),
        ])?;
        let context = Context::from_records(snap.list(1), None, None)?;
        let mut attrs = None;
        let held = match snap.get(0) {
            None => None,
            Some(kv) => {
                let rec: HandleRecord = decode(kv)?;
                attrs = Some(rec.attrs.clone());
                let addresses = described(&rec, &context);
                (!addresses.is_empty()).then(|| Assignment {
                    handle: id.to_string(),
                    addresses,
                    released_held: None,
                })
            }
        };
        Ok(Attachment {
            held,
            attrs,
            context,
        })
    }
}

/// The addresses of `rec` as [`Ipam::assign`] would have returned them, their pools looked
/// up in `context`. An address whose pool was deleted since reports an empty pool name and
/// the network of its block as the pool network.
pub(super) fn described(rec: &HandleRecord, context: &Context) -> Vec<AssignedAddress> {
    rec.addresses
        .iter()
        .map(|a| {
            let block = parse_block_key(&a.block)
                .map(|(_, net)| net)
                .unwrap_or_else(|| a.ip.into());
            match context.pool_containing(a.ip) {
                Some(p) => p.assigned(a.ip, block),
                None => AssignedAddress {
                    ip: a.ip,
                    pool: String::new(),
                    pool_cidr: block,
                    block,
                    gateway: None,
                    routes: Vec::new(),
                    vlan: None,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::AssignRequest;
    use crate::store::{MemoryStore, Op};

    #[test]
    fn prefix_listing_and_attachment_view() {
        let ipam = Ipam::new(MemoryStore::new());
        let pool = serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                                      "metadata": {"name": "p"},
                                      "spec": {"cidr": "10.0.0.0/24", "blockSize": 28}});
        let op = Op::Put(keys::pool("p"), serde_json::to_vec(&pool).unwrap());
        ipam.store().txn(&[], &[op]).unwrap();
        for id in [
            "net.c1.eth0",
            "net.c2.eth0",
            "net/x.c3.eth0",
            "other.c1.eth0",
        ] {
            ipam.assign(&AssignRequest {
                handle: id.into(),
                node: "n".into(),
                num_v4: 1,
                ..Default::default()
            })
            .unwrap();
        }
        let ids: Vec<String> = ipam
            .handles_with_prefix("net")
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(ids, ["net/x.c3.eth0", "net.c1.eth0", "net.c2.eth0"]);
        assert_eq!(ipam.handles_with_prefix("net/").unwrap().len(), 1);
        let view = ipam.attachment("net.c2.eth0").unwrap();
        let held = view.held.unwrap();
        assert_eq!(held.addresses[0].pool, "p");
        assert_eq!(held.addresses[0].pool_cidr.to_string(), "10.0.0.0/24");
        assert_eq!(held.addresses[0].block.to_string(), "10.0.0.0/28");
        assert!(view.context.pool_by_name("p").is_some());
        assert!(ipam.attachment("net.c9.eth0").unwrap().held.is_none());
        assert!(ipam.handle("net.c9.eth0").unwrap().is_none());
    }
}
