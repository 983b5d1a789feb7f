//! Datastore backends for Tessera (implementation pending).

pub use tessera_core::store::*;
