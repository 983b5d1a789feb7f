//! The part of etcd's v3 gRPC API that Tessera's etcd backend calls: `KV.Txn` and
//! `Auth.Authenticate`, with the messages they carry.
//!
//! The types are generated at build time from `proto/`, a description written for Tessera
//! with etcd's package names, message names and field numbers. It is compiled by protox (a
//! protobuf compiler in Rust), so no `protoc` is needed to build Tessera.

/// etcd's stored record (`mvccpb.KeyValue`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// etcd's v3 API (`etcdserverpb`): the KV and Auth clients and their messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}
