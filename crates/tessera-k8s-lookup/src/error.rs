//! What can go wrong reading from the API server, each saying where and what to do.

use std::path::PathBuf;
use std::time::Duration;

/// A failed lookup.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The kubeconfig file cannot be read.
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    KubeconfigUnreadable {
        /// The kubeconfig file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kubeconfig is not YAML of the expected shape.
    #[error("kubeconfig {} is not a valid kubeconfig: {reason}", path.display())]
    KubeconfigSyntax {
        /// The kubeconfig file.
        path: PathBuf,
        /// The parser's message, with its line.
        reason: String,
    },
    /// A field of the kubeconfig is missing or wrong.
    #[error("kubeconfig {}, {field}: {problem}", path.display())]
    KubeconfigField {
        /// The kubeconfig file.
        path: PathBuf,
        /// The field, as a path (`users[name=cni].user.tokenFile`).
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The API server address is not an `http://` or `https://` URL.
    #[error("API server address {server:?} ({source_field}) is not usable: {problem}")]
    BadServer {
        /// The address as given.
        server: String,
        /// Where it was given (`kubernetes.k8s_api_root`, a kubeconfig's cluster `server`).
        source_field: String,
        /// What is wrong.
        problem: String,
    },
    /// No connection could be made, or it broke.
    #[error("cannot reach the Kubernetes API server at {server}: {reason}")]
    Unreachable {
        /// The API server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The API server did not answer in time.
    #[error(
        "the Kubernetes API server at {server} did not answer within {} ms",
        timeout.as_millis()
    )]
    Timeout {
        /// The API server.
        server: String,
        /// The time allowed for all requests together.
        timeout: Duration,
    },
    /// The object does not exist.
    #[error("{kind} {name} not found on the Kubernetes API server at {server}")]
    NotFound {
        /// `pod`, `namespace`, `job` or `replicaset`.
        kind: &'static str,
        /// `namespace/name` or the namespace's name.
        name: String,
        /// The API server.
        server: String,
    },
    /// The credentials were refused (401) or lack a permission (403).
    #[error(
        "the Kubernetes API server at {server} refused to {verb} {resource} ({status}): \
         {message}; the plugin's credentials need RBAC permission to {verb} {resource}"
    )]
    Refused {
        /// The API server.
        server: String,
        /// HTTP status.
        status: u16,
        /// The RBAC verb needed (`get`).
        verb: &'static str,
        /// The RBAC resource needed (`pods`, `namespaces`, `jobs`).
        resource: &'static str,
        /// The API's `message`.
        message: String,
    },
    /// Any other unsuccessful status.
    #[error("GET {url} answered {status}: {message}")]
    Status {
        /// The URL asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// The API's `message`, or the start of the body.
        message: String,
    },
    /// The answer is not the object asked for.
    #[error("GET {url} answered something that is not a {kind}: {reason}")]
    Decode {
        /// The URL asked.
        url: String,
        /// `Pod` or `Namespace`.
        kind: &'static str,
        /// Why it does not decode.
        reason: String,
    },
}

impl LookupError {
    /// Whether trying again later may succeed: the server was unreachable, slow, or answered
    /// with a server-side error.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}
