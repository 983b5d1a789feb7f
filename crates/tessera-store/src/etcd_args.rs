//! The etcd connection flags that `tessera` and `tessera-controller` share: one set of flag
//! names and environment variables for every binary that opens a datastore.

use std::path::PathBuf;

use clap::Args;

/// Connection settings of an etcd datastore; each may also come from the environment.
#[derive(Debug, Args)]
#[command(next_help_heading = "etcd datastore")]
pub struct EtcdArgs {
    /// CA certificate (PEM) that signed the etcd server certificates; needed by etcds://.
    #[arg(long, global = true, env = "TESSERA_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), for clusters started with --client-cert-auth.
    #[arg(long, global = true, env = "TESSERA_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, global = true, env = "TESSERA_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// User name, for clusters with authentication enabled.
    #[arg(
        long,
        global = true,
        env = "TESSERA_ETCD_USERNAME",
        value_name = "USER"
    )]
    pub etcd_username: Option<String>,
    /// Password of the etcd user. Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long,
        global = true,
        env = "TESSERA_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// Prefix of every Tessera key in etcd [default: /tessera/v1/].
    #[arg(
        long,
        global = true,
        env = "TESSERA_ETCD_PREFIX",
        value_name = "PREFIX"
    )]
    pub etcd_prefix: Option<String>,
}

impl EtcdArgs {
    /// The options for [`crate::open_with`]. Empty values count as unset, as with
    /// `TESSERA_ETCD_CA= tessera ...`.
    pub fn options(&self) -> crate::OpenOptions {
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let text = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        crate::OpenOptions {
            etcd_ca: path(&self.etcd_ca),
            etcd_cert: path(&self.etcd_cert),
            etcd_key: path(&self.etcd_key),
            etcd_username: text(&self.etcd_username),
            etcd_password: text(&self.etcd_password),
            etcd_prefix: text(&self.etcd_prefix),
            etcd_timeout_ms: None,
        }
    }
}
