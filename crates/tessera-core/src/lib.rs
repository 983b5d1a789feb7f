//! Tessera's core: resource types, validation, the Calico selector language, block math,
//! the datastore contract and the IP allocator. No I/O happens here; every read and write goes
//! through the [`store::Store`] trait.

pub mod autopool;
pub mod catalog;
pub mod decode;
pub mod drain;
pub mod ipam;
pub mod json;
pub mod keys;
pub mod migrate;
pub mod net;
pub mod ownership;
pub mod plan;
pub mod ranges;
pub mod resources;
pub mod retry;
pub mod selector;
pub mod store;
pub mod text;
pub mod validate;
