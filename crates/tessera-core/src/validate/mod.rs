//! The rules resources must follow, applied before anything is stored.
//!
//! [`validate`] checks one resource on its own and returns it with its defaults filled in:
//! [`calico`] holds the rules of Calico's kinds, Nodes and Namespaces, [`spider`] those of
//! Spiderpool's. [`calico::check_pool_against`] and [`spider::check_spider_against`] check a pool
//! against the pools that will exist with it. [`names`] holds the rules every kind shares (names,
//! labels, annotation keys, handle ids) and [`network`] reads CIDR fields. Every problem becomes
//! one [`error::FieldError`] naming the field, what is wrong with it and what to write instead;
//! all problems of a resource are reported at once in an [`error::ValidationError`].
//!
//! Rules import the types of [`crate::resources`]; the types never import the rules.

pub mod calico;
pub mod error;
pub mod names;
pub mod network;
pub mod spider;

use crate::resources::Resource;
use calico::{
    validate_ipam_config, validate_namespace, validate_node, validate_pool, validate_reservation,
};
use error::ValidationError;
use spider::{validate_spider_pool, validate_spider_reserved, validate_spider_subnet};

/// Checks a resource on its own and returns it with its defaults filled in.
///
/// Rules for pools: a DNS-1123 name; a strictly masked IPv4 or IPv6 `cidr` outside the
/// link-local ranges; `blockSize` 20–32 (IPv4) or 116–128 (IPv6) and no shorter than the pool's
/// prefix; at most one of `ipipMode`/`vxlanMode` other than `Never`, no IPIP on IPv6;
/// `allowedUses` without duplicates and with `LoadBalancer` alone; selectors that parse.
/// Spiderpool kinds follow Spiderpool's rules ([`validate_spider_pool`] and friends).
pub fn validate(resource: Resource) -> Result<Resource, ValidationError> {
    let kind = resource.kind();
    let name = resource.name().to_string();
    let mut errors = Vec::new();
    let out = match resource {
        Resource::IPPool(p) => Resource::IPPool(validate_pool(p, &mut errors)),
        Resource::IPReservation(r) => Resource::IPReservation(validate_reservation(r, &mut errors)),
        Resource::IPAMConfiguration(c) => {
            Resource::IPAMConfiguration(validate_ipam_config(c, &mut errors))
        }
        Resource::Node(n) => Resource::Node(validate_node(n, &mut errors)),
        Resource::Namespace(n) => Resource::Namespace(validate_namespace(n, &mut errors)),
        Resource::SpiderIPPool(p) => Resource::SpiderIPPool(validate_spider_pool(p, &mut errors)),
        Resource::SpiderSubnet(s) => Resource::SpiderSubnet(validate_spider_subnet(s, &mut errors)),
        Resource::SpiderReservedIP(r) => {
            Resource::SpiderReservedIP(validate_spider_reserved(r, &mut errors))
        }
    };
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ValidationError { kind, name, errors })
    }
}
