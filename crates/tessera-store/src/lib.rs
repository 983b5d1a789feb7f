//! Datastore backends for Tessera and the URL that picks one.
//!
//! [`open`] turns a `--datastore` value into a [`Store`]: a SQLite file (the default, see
//! [`SqliteStore`]), a throw-away in-memory store, or an etcd v3 cluster (`EtcdStore`, with the
//! cargo feature `etcd`). [`open_with`] does the same with [`OpenOptions`]: the TLS files,
//! credentials, key prefix and timeout of an etcd datastore. [`resolve_datastore`] decides
//! which value applies: the flag, then `TESSERA_DATASTORE`, then [`default_datastore`].
//! [`conformance`] holds the checks every backend must pass.

#![warn(missing_docs)]

pub mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "clap")]
pub mod etcd_args;
#[cfg(feature = "etcd")]
pub mod local_etcd;
mod sqlite;

use std::path::PathBuf;

#[cfg(feature = "etcd")]
pub use etcd::{
    EtcdStore, EtcdUrl, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, DEFAULT_PREFIX, DEFAULT_TIMEOUT,
};
pub use sqlite::{SqliteStore, DEFAULT_BUSY_TIMEOUT, SCHEMA_VERSION};
pub use tessera_core::store::*;

/// Environment variable naming the datastore when no `--datastore` flag is given.
pub const DATASTORE_ENV: &str = "TESSERA_DATASTORE";

/// Default store of root (and so of the CNI plugin, which the container runtime runs as root).
pub const ROOT_DATASTORE: &str = "/var/lib/tessera/tessera.db";

const ACCEPTED_FORMS: &str = "a file path, sqlite:PATH, sqlite:///ABSOLUTE/PATH, memory, or \
     etcd://HOST:PORT[,HOST:PORT] (etcds:// for TLS)";

/// Why [`open`] could not produce a store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The datastore value is not in any accepted form.
    #[error(
        "datastore {url:?} is not a valid datastore URL: {reason}; accepted forms: {}; \
         set it with --datastore or {DATASTORE_ENV}",
        ACCEPTED_FORMS
    )]
    BadUrl {
        /// The value as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value names an etcd cluster, but this build has no etcd client.
    #[error(
        "datastore {url:?} is an etcd cluster, but this binary was built without etcd support \
         (cargo feature `etcd` of tessera-store); use a build with it, or a SQLite file \
         (for example --datastore {ROOT_DATASTORE})"
    )]
    EtcdNotBuilt {
        /// The value as given.
        url: String,
    },
    /// The datastore options do not fit together or name unreadable files.
    #[error("invalid datastore options: {reason}")]
    InvalidOptions {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The URL was fine, but the store itself could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a datastore value points, before anything is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A fresh in-memory store that lives as long as the returned handle.
    Memory,
    /// A SQLite file; relative paths are relative to the current directory.
    Sqlite(PathBuf),
    /// An etcd cluster (`etcd://` or `etcds://`), kept verbatim for the etcd backend.
    Etcd(String),
}

impl Location {
    /// Parses a `--datastore` value.
    ///
    /// Accepted: a plain path (`/var/lib/tessera/tessera.db`, `./x.db`), `sqlite:PATH`,
    /// `sqlite:///ABSOLUTE/PATH`, `memory` or `memory:`, `etcd://...`, `etcds://...`. Anything
    /// else that starts like a URL scheme (`word:`) is rejected rather than taken as a file
    /// name, so a typo such as `sqlit:/x.db` does not silently create a new store; a file
    /// whose name has such a colon can still be given as `./NAME` or `sqlite:NAME`.
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        let bad = |reason: &str| OpenError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        if url == "memory" || url == "memory:" {
            return Ok(Location::Memory);
        }
        if url.starts_with("etcd://") || url.starts_with("etcds://") {
            return Ok(Location::Etcd(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("sqlite://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "sqlite:// must be followed by an absolute path (sqlite:///var/lib/x.db); \
                     for a relative path write sqlite:PATH",
                ));
            }
            return Ok(Location::Sqlite(PathBuf::from(rest)));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            if rest.is_empty() {
                return Err(bad("sqlite: must be followed by a file path"));
            }
            return Ok(Location::Sqlite(PathBuf::from(rest)));
        }
        if let Some(scheme) = url_scheme(url) {
            return Err(bad(&if url.contains("://") {
                format!("unknown scheme {scheme:?}")
            } else {
                format!(
                    "unknown scheme {scheme:?} (for a file whose name contains ':', write \
                     ./{url} or sqlite:{url})"
                )
            }));
        }
        Ok(Location::Sqlite(PathBuf::from(url)))
    }
}

/// The `scheme` of a value shaped like `scheme:rest` (RFC 3986 scheme characters).
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// How to connect to an etcd datastore, next to its URL: the part of a datastore's settings
/// that does not fit in (or should not be written into) the URL.
///
/// Deserializable, so a configuration file can embed it; the CNI network configuration puts
/// these fields beside `datastore` in its `ipam` section. The field names are the CLI flags'
/// (`--etcd-ca` is `etcd_ca`); Calico's CNI names (`etcd_ca_cert_file`, `etcd_cert_file`,
/// `etcd_key_file`) are accepted too. Every field is optional, and setting any of them for a
/// datastore that is not etcd is an error rather than silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct OpenOptions {
    /// PEM file of the certificate authority that signed the etcd server certificates.
    /// Required by `etcds://`.
    #[serde(alias = "etcd_ca_cert_file", skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate, for clusters that require client certificates
    /// (`--client-cert-auth`). Needs `etcd_key`.
    #[serde(alias = "etcd_cert_file", skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of `etcd_cert`.
    #[serde(alias = "etcd_key_file", skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    /// User name, for clusters with authentication enabled. Needs `etcd_password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_username: Option<String>,
    /// Password of `etcd_username`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_password: Option<String>,
    /// Prefix of every Tessera key in etcd; default `/tessera/v1/`; a missing final `/` is
    /// added. Two Tessera installations can share one cluster under different prefixes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_prefix: Option<String>,
    /// Time allowed for one request, in milliseconds, fail-over to other members included;
    /// default 5000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_timeout_ms: Option<u64>,
}

impl OpenOptions {
    /// The names of the options that are set, as CLI flags, for messages.
    fn set_flags(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let mut note = |is_set: bool, flag| {
            if is_set {
                set.push(flag);
            }
        };
        note(self.etcd_ca.is_some(), "--etcd-ca (etcd_ca)");
        note(self.etcd_cert.is_some(), "--etcd-cert (etcd_cert)");
        note(self.etcd_key.is_some(), "--etcd-key (etcd_key)");
        note(
            self.etcd_username.is_some(),
            "--etcd-username (etcd_username)",
        );
        note(
            self.etcd_password.is_some(),
            "--etcd-password (etcd_password)",
        );
        note(self.etcd_prefix.is_some(), "--etcd-prefix (etcd_prefix)");
        note(self.etcd_timeout_ms.is_some(), "etcd_timeout_ms");
        set
    }
}

/// Opens the datastore named by `url` (see [`Location::parse`] for the accepted forms).
///
/// `memory` gives a new, empty store each call, visible only through the returned handle.
pub fn open(url: &str) -> Result<Box<dyn Store>, OpenError> {
    open_with(url, &OpenOptions::default())
}

/// Opens the datastore named by `url` with connection options (TLS, credentials, key prefix
/// and timeout of an etcd datastore).
///
/// Opening an etcd datastore sends nothing: the first read or write connects, so an
/// unreachable cluster is reported by that call, as [`StoreError::Unavailable`].
pub fn open_with(url: &str, options: &OpenOptions) -> Result<Box<dyn Store>, OpenError> {
    let location = Location::parse(url)?;
    if !matches!(location, Location::Etcd(_)) {
        let set = options.set_flags();
        if !set.is_empty() {
            return Err(OpenError::InvalidOptions {
                reason: format!(
                    "{} {} only to etcd datastores (etcd:// or etcds://), but the datastore \
                     is {url:?}; remove {}, or point the datastore at the etcd cluster",
                    set.join(", "),
                    if set.len() == 1 { "applies" } else { "apply" },
                    if set.len() == 1 { "it" } else { "them" },
                ),
            });
        }
    }
    match location {
        Location::Memory => Ok(Box::new(MemoryStore::new())),
        Location::Sqlite(path) => Ok(Box::new(SqliteStore::open(path)?)),
        #[cfg(feature = "etcd")]
        Location::Etcd(url) => Ok(Box::new(EtcdStore::open(&url, options)?)),
        #[cfg(not(feature = "etcd"))]
        Location::Etcd(url) => Err(OpenError::EtcdNotBuilt { url }),
    }
}

/// The datastore used when neither `--datastore` nor `TESSERA_DATASTORE` is set: the system
/// store for root, a per-user store otherwise, so a newcomer can try Tessera without sudo.
pub fn default_datastore() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let xdg = std::env::var("XDG_DATA_HOME").ok();
    let home = std::env::var("HOME").ok();
    default_datastore_from(is_root, xdg.as_deref(), home.as_deref())
}

/// [`default_datastore`] with its inputs passed in: whether the effective user is root, and
/// the values of `XDG_DATA_HOME` and `HOME`.
///
/// Root gets [`ROOT_DATASTORE`]; others get `$XDG_DATA_HOME/tessera/tessera.db` when that
/// variable is an absolute path (the XDG spec says to ignore relative ones), else
/// `$HOME/.local/share/tessera/tessera.db`, else `tessera.db` in the current directory.
pub fn default_datastore_from(
    is_root: bool,
    xdg_data_home: Option<&str>,
    home: Option<&str>,
) -> String {
    if is_root {
        return ROOT_DATASTORE.to_string();
    }
    if let Some(xdg) = xdg_data_home.filter(|x| x.starts_with('/')) {
        return format!("{}/tessera/tessera.db", xdg.trim_end_matches('/'));
    }
    if let Some(home) = home.filter(|h| !h.is_empty()) {
        return format!(
            "{}/.local/share/tessera/tessera.db",
            home.trim_end_matches('/')
        );
    }
    "tessera.db".to_string()
}

/// The datastore to use: the `--datastore` flag if given, else `TESSERA_DATASTORE`, else
/// [`default_datastore`].
pub fn resolve_datastore(flag: Option<&str>) -> String {
    let env = std::env::var(DATASTORE_ENV).ok();
    resolve_datastore_from(flag, env.as_deref(), &default_datastore())
}

/// [`resolve_datastore`] with the environment value and the default passed in. An empty flag
/// or variable counts as unset, as with `TESSERA_DATASTORE= tessera ...`.
pub fn resolve_datastore_from(flag: Option<&str>, env: Option<&str>, default: &str) -> String {
    flag.filter(|f| !f.is_empty())
        .or(env.filter(|e| !e.is_empty()))
        .unwrap_or(default)
        .to_string()
}
