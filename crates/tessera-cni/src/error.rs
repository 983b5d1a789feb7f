//! The one error type of the plugin. Every failure becomes a [`CniError`] carrying the CNI
//! error code, and `main` turns it into the spec's error JSON and a non-zero exit status at a
//! single place.

use tessera_core::ipam::IpamError;
use tessera_k8s_lookup::LookupError;
use tessera_store::{OpenError, StoreError};

/// CNI error codes: the spec's well-known ones (below 100) and Tessera's own (100 and up).
pub mod code {
    /// Incompatible CNI version (unsupported `cniVersion`, or a verb that version lacks).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// I/O failure: the datastore or the Kubernetes API server refused access (permissions,
    /// authentication, read-only file system), or the API server's answer was unusable.
    pub const IO_FAILURE: u32 = 5;
    /// Invalid necessary environment variables.
    pub const BAD_ENV: u32 = 4;
    /// Failed to decode content (stdin is not JSON, `prevResult` is malformed).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the datastore or the Kubernetes API server is busy or unreachable.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (datastore unreachable, no pool has room).
    pub const NOT_AVAILABLE: u32 = 50;
    /// No address available: no pool selects the node, or every candidate pool is full.
    pub const NO_ADDRESS: u32 = 100;
    /// A specific address asked for (`ipAddrs`, runtimeConfig `ips`) cannot be given: in
    /// use, reserved, outside every pool, or a pool's network/broadcast address.
    pub const ADDRESS_UNAVAILABLE: u32 = 101;
    /// A pool named by an annotation or the network configuration does not exist, is
    /// disabled, is of the other family or does not allow workloads.
    pub const POOL_UNUSABLE: u32 = 102;
    /// CHECK: the attachment no longer holds the addresses of `prevResult`.
    pub const CHECK_FAILED: u32 = 103;
    /// The datastore holds damaged records or is not a Tessera store.
    pub const DATASTORE_DAMAGED: u32 = 104;
    /// GC could not release every stale attachment (the others were released).
    pub const GC_INCOMPLETE: u32 = 105;
    /// The gateway the result would carry is an address pods could be given, or one a pod
    /// already holds.
    pub const GATEWAY_NOT_RESERVED: u32 = 106;
    /// A pod annotation or runtimeConfig value is malformed.
    pub const BAD_POD_REQUEST: u32 = 107;
    /// The datastore is full (etcd's NOSPACE alarm): an operator must free space.
    pub const DATASTORE_FULL: u32 = 108;
    /// A record is larger than the datastore accepts (etcd's `--max-request-bytes`).
    pub const RECORD_TOO_LARGE: u32 = 109;
    /// ADD: this attachment's handle holds addresses for another pod or container; they are
    /// never handed to a second workload.
    pub const HELD_FOR_ANOTHER: u32 = 110;
    /// ADD: the pod is not in Kubernetes (deleted, or replaced by a pod of the same name
    /// with another uid), or its namespace is not.
    pub const POD_NOT_IN_KUBERNETES: u32 = 111;
}

/// A failure, as the CNI spec reports it: a code, a message saying what was wrong, and
/// details saying where (network, attachment, node, datastore) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// CNI error code (see [`code`]).
    pub code: u32,
    /// What went wrong.
    pub msg: String,
    /// Where it went wrong and what to do; may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a code and message and no details yet.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds where the error happened to the details (kept once: the outermost call site
    /// that knows the context adds it).
    pub fn context(mut self, context: impl AsRef<str>) -> Self {
        let context = context.as_ref();
        if self.details.is_empty() {
            self.details = context.to_string();
        } else if !context.is_empty() {
            self.details = format!("{}; {}", self.details, context);
        }
        self
    }

    /// Invalid environment.
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(code::BAD_ENV, msg)
    }

    /// Invalid network configuration.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    /// Undecodable input.
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg)
    }

    /// The error as the spec's JSON object, in the shape of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), cni_version.into());
        out.insert("code".into(), self.code.into());
        out.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            out.insert("details".into(), self.details.clone().into());
        }
        out.into()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            write!(f, "[{}] {}", self.code, self.msg)
        } else {
            write!(f, "[{}] {}; {}", self.code, self.msg, self.details)
        }
    }
}

/// The CNI code of a datastore failure.
fn store_code(e: &StoreError) -> u32 {
    match e {
        StoreError::Unavailable { .. } => code::TRY_AGAIN,
        StoreError::Refused { .. } => code::IO_FAILURE,
        StoreError::Corrupt { .. } => code::DATASTORE_DAMAGED,
        StoreError::Full { .. } => code::DATASTORE_FULL,
        StoreError::TooLarge { .. } => code::RECORD_TOO_LARGE,
    }
}

impl From<StoreError> for CniError {
    fn from(e: StoreError) -> Self {
        Self::new(store_code(&e), e.to_string())
    }
}

impl From<OpenError> for CniError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Store(e) => e.into(),
            e @ (OpenError::BadUrl { .. }
            | OpenError::EtcdNotBuilt { .. }
            | OpenError::InvalidOptions { .. }) => {
                Self::new(code::INVALID_CONFIG, format!("ipam.datastore: {e}"))
            }
        }
    }
}

impl From<LookupError> for CniError {
    fn from(e: LookupError) -> Self {
        let code = match &e {
            LookupError::KubeconfigUnreadable { .. }
            | LookupError::KubeconfigSyntax { .. }
            | LookupError::KubeconfigField { .. }
            | LookupError::BadServer { .. } => code::INVALID_CONFIG,
            LookupError::Unreachable { .. } | LookupError::Timeout { .. } => code::TRY_AGAIN,
            LookupError::NotFound { .. } => code::POD_NOT_IN_KUBERNETES,
            LookupError::Refused { .. } | LookupError::Decode { .. } => code::IO_FAILURE,
            LookupError::Status { .. } if e.is_transient() => code::TRY_AGAIN,
            LookupError::Status { .. } => code::IO_FAILURE,
        };
        Self::new(code, e.to_string())
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let code = match &e {
            IpamError::Store(s) => store_code(s),
            IpamError::Contention(_) | IpamError::BeyondView => code::TRY_AGAIN,
            IpamError::CorruptRecord { .. } => code::DATASTORE_DAMAGED,
            IpamError::InvalidRequest(_) => code::BAD_POD_REQUEST,
            IpamError::PoolNotFound(_)
            | IpamError::PoolDisabled(_)
            | IpamError::PoolWrongFamily { .. }
            | IpamError::PoolNotForWorkloads(_) => code::POOL_UNUSABLE,
            IpamError::NoPool { .. }
            | IpamError::Exhausted { .. }
            | IpamError::PoolsRefuse { .. } => code::NO_ADDRESS,
            IpamError::AddressNotInPool(_)
            | IpamError::AddressInUse { .. }
            | IpamError::AddressReserved { .. }
            | IpamError::AddressUnusable { .. }
            | IpamError::LeftoverBlock { .. } => code::ADDRESS_UNAVAILABLE,
            IpamError::GatewayInUse { .. } => code::GATEWAY_NOT_RESERVED,
        };
        Self::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_omits_empty_details() {
        let e = CniError::config("bad");
        assert_eq!(
            e.to_json("1.0.0").to_string(),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"bad"}"#
        );
        let e = e.context("network n");
        assert_eq!(
            e.to_json("0.3.1").to_string(),
            r#"{"cniVersion":"0.3.1","code":7,"msg":"bad","details":"network n"}"#
        );
    }

    #[test]
    fn transient_ipam_errors_say_try_again() {
        assert_eq!(
            CniError::from(IpamError::Contention(64)).code,
            code::TRY_AGAIN
        );
        let unavailable = StoreError::Unavailable {
            endpoint: "x".into(),
            reason: "locked".into(),
        };
        assert_eq!(
            CniError::from(IpamError::Store(unavailable)).code,
            code::TRY_AGAIN
        );
    }

    #[test]
    fn a_full_store_and_a_too_large_record_have_codes_of_their_own() {
        let full = || StoreError::Full {
            endpoint: "x".into(),
            reason: "NOSPACE".into(),
        };
        let too_large = || StoreError::TooLarge {
            endpoint: "x".into(),
            reason: "request is too large".into(),
        };
        assert_eq!(CniError::from(full()).code, code::DATASTORE_FULL);
        assert_eq!(
            CniError::from(IpamError::Store(full())).code,
            code::DATASTORE_FULL
        );
        assert_eq!(CniError::from(too_large()).code, code::RECORD_TOO_LARGE);
        assert_eq!(
            CniError::from(IpamError::Store(too_large())).code,
            code::RECORD_TOO_LARGE
        );
    }
}
