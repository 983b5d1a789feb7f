//! The HTTP client: one connection, plain GETs, everything under one deadline.
//!
//! Built on hyper's HTTP/1 connection API and tokio-rustls rather than a full client (kube-rs,
//! reqwest): the plugin makes two requests per ADD and must start fast, and these crates are
//! linked into it already for the etcd datastore.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::LookupError;
use crate::kubeconfig::ApiAccess;
use crate::objects::{Job, Namespace, Pod, ReplicaSet};

/// Largest answer read: a Pod with many containers is tens of kilobytes.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Reads objects from one API server.
pub struct Client {
    access: ApiAccess,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
}

/// One object to GET.
struct Get {
    /// `Pod`, `Namespace`, `Job` or `ReplicaSet`, for decode errors.
    kind: &'static str,
    /// `pod`, `namespace`, `job` or `replicaset`, for not-found errors.
    noun: &'static str,
    /// The RBAC resource (`pods`), for refusals.
    resource: &'static str,
    /// `namespace/name` or the name, for not-found errors.
    name: String,
    /// The URL path below the server's base path.
    path: String,
}

impl Client {
    /// A client of `access` whose calls each finish, successfully or not, within `timeout`.
    pub fn new(access: ApiAccess, timeout: Duration) -> Result<Self, LookupError> {
        let tls = if access.server.https {
            Some(Arc::new(tls_config(&access)?))
        } else {
            None
        };
        Ok(Self {
            access,
            timeout,
            tls,
        })
    }

    /// GETs the pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Pod, LookupError> {
        self.run(async {
            let mut conn = self.connect().await?;
            self.get(&mut conn, &pod_get(namespace, name)).await
        })
    }

    /// GETs the namespace `name`.
    pub fn namespace(&self, name: &str) -> Result<Namespace, LookupError> {
        self.run(async {
            let mut conn = self.connect().await?;
            self.get(&mut conn, &namespace_get(name)).await
        })
    }

    /// GETs the ReplicaSet `namespace/name` (whose owner is the Deployment of its pods).
    pub fn replica_set(&self, namespace: &str, name: &str) -> Result<ReplicaSet, LookupError> {
        self.run(async {
            let mut conn = self.connect().await?;
            self.get(&mut conn, &replica_set_get(namespace, name)).await
        })
    }

    /// GETs the pod `namespace/name` and its namespace, one after the other on one
    /// connection, both within the client's timeout.
    pub fn pod_and_namespace(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Pod, Namespace), LookupError> {
        let (pod, ns, _) = self.pod_namespace_and_job(namespace, name, |_| None)?;
        Ok((pod, ns))
    }

    /// [`Client::pod_and_namespace`], then the Job of the pod's namespace that `job_of`
    /// names for the pod, if it names one (the pod's owner, when its CronJob matters), on
    /// the same connection and within the same timeout.
    pub fn pod_namespace_and_job(
        &self,
        namespace: &str,
        name: &str,
        job_of: impl FnOnce(&Pod) -> Option<String>,
    ) -> Result<(Pod, Namespace, Option<Job>), LookupError> {
        self.run(async {
            let mut conn = self.connect().await?;
            let pod = self.get(&mut conn, &pod_get(namespace, name)).await?;
            let ns = self.get(&mut conn, &namespace_get(namespace)).await?;
            let job = match job_of(&pod) {
                Some(job) => Some(self.get(&mut conn, &job_get(namespace, &job)).await?),
                None => None,
            };
            Ok((pod, ns, job))
        })
    }

    /// Runs `work` on a runtime of its own, under the timeout.
    fn run<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, LookupError>>,
    ) -> Result<T, LookupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| self.unreachable(format!("cannot start the I/O runtime: {e}")))?;
        let result = runtime.block_on(async {
            tokio::time::timeout(self.timeout, work)
                .await
                .unwrap_or_else(|_| {
                    Err(LookupError::Timeout {
                        server: self.access.server.to_string(),
                        timeout: self.timeout,
                    })
                })
        });
        // A host name lookup still running past the timeout must not hold the caller: a
        // dropped runtime would wait for it.
        runtime.shutdown_background();
        result
    }

    fn unreachable(&self, reason: impl Into<String>) -> LookupError {
        LookupError::Unreachable {
            server: self.access.server.to_string(),
            reason: reason.into(),
        }
    }

    /// Opens the connection (TCP, then TLS for https) and starts HTTP/1 on it.
    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, LookupError> {
        let server = &self.access.server;
        let tcp = tokio::net::TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp).await,
            Some(config) => {
                let name = self
                    .access
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| server.host.clone());
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    self.unreachable(format!("{name:?} is not a valid TLS server name"))
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS handshake failed: {e}")))?;
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<S>(
        &self,
        stream: S,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, LookupError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(format!("HTTP handshake failed: {e}")))?;
        // The connection task ends with the runtime; its error reaches the request.
        tokio::spawn(connection);
        Ok(sender)
    }

    /// One GET on the open connection, decoded as `T`.
    async fn get<T: DeserializeOwned>(
        &self,
        conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        what: &Get,
    ) -> Result<T, LookupError> {
        let server = &self.access.server;
        let url = format!("{server}{}", what.path);
        let mut request = http::Request::get(format!("{}{}", server.base_path, what.path))
            .header(http::header::HOST, server.authority())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("tessera-ipam/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.access.token {
            request = request.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.value()?),
            );
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| self.unreachable(format!("cannot build the request for {url}: {e}")))?;
        conn.ready()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(format!("GET {url}: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| self.unreachable(format!("GET {url}: reading the answer: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(self.status_error(what, &url, status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|e| LookupError::Decode {
            url,
            kind: what.kind,
            reason: e.to_string(),
        })
    }

    fn status_error(&self, what: &Get, url: &str, status: u16, body: &[u8]) -> LookupError {
        let server = self.access.server.to_string();
        let message = api_message(body);
        match status {
            404 => LookupError::NotFound {
                kind: what.noun,
                name: what.name.clone(),
                server,
            },
            401 | 403 => LookupError::Refused {
                server,
                status,
                verb: "get",
                resource: what.resource,
                message,
            },
            _ => LookupError::Status {
                url: url.to_string(),
                status,
                message,
            },
        }
    }
}

/// A GET of the object `namespace/name` of `resource` under the API path `api`
/// (`/api/v1`, `/apis/apps/v1`).
fn namespaced_get(
    (kind, noun, resource): (&'static str, &'static str, &'static str),
    api: &str,
    namespace: &str,
    name: &str,
) -> Get {
    Get {
        kind,
        noun,
        resource,
        name: format!("{namespace}/{name}"),
        path: format!(
            "{api}/namespaces/{}/{resource}/{}",
            path_segment(namespace),
            path_segment(name)
        ),
    }
}

fn pod_get(namespace: &str, name: &str) -> Get {
    namespaced_get(("Pod", "pod", "pods"), "/api/v1", namespace, name)
}

fn replica_set_get(namespace: &str, name: &str) -> Get {
    let what = ("ReplicaSet", "replicaset", "replicasets");
    namespaced_get(what, "/apis/apps/v1", namespace, name)
}

fn job_get(namespace: &str, name: &str) -> Get {
    namespaced_get(("Job", "job", "jobs"), "/apis/batch/v1", namespace, name)
}

fn namespace_get(name: &str) -> Get {
    Get {
        kind: "Namespace",
        noun: "namespace",
        resource: "namespaces",
        name: name.to_string(),
        path: format!("/api/v1/namespaces/{}", path_segment(name)),
    }
}

/// `text` as one URL path segment: anything but unreserved characters percent-encoded, and
/// the dots of `.` and `..` too, so a name from `CNI_ARGS` can never change which object is
/// asked for.
fn path_segment(text: &str) -> String {
    let only_dots = text.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let plain = matches!(b, b'-' | b'_' | b'~') || (b == b'.' && !only_dots);
        if b.is_ascii_alphanumeric() || plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `message` of a Kubernetes `Status` answer, else the start of the body.
fn api_message(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(msg) = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
    {
        return msg.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no message".into();
    }
    text.chars().take(200).collect()
}

/// The TLS settings of `access`: its certificate authorities (or no check of the server's
/// certificate with `insecure-skip-tls-verify`) and its client certificate.
fn tls_config(access: &ApiAccess) -> Result<ClientConfig, LookupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad = |reason: String| LookupError::BadServer {
        server: access.server.to_string(),
        source_field: "kubeconfig".into(),
        problem: reason,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS setup: {e}")))?;
    let builder = if access.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        for cert in &access.roots {
            roots
                .add(cert.clone())
                .map_err(|e| bad(format!("the certificate authority is not usable: {e}")))?;
        }
        builder.with_root_certificates(roots)
    };
    match &access.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(format!("the client certificate or key is not usable: {e}"))),
    }
}

/// `insecure-skip-tls-verify`: the server's certificate is not checked, but the handshake's
/// signatures still are, as kubectl does.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_change_the_path() {
        assert_eq!(path_segment("web-0.a_b~"), "web-0.a_b~");
        assert_eq!(path_segment("../x?y"), "..%2Fx%3Fy");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(
            pod_get("ns", "a/b").path,
            "/api/v1/namespaces/ns/pods/a%2Fb"
        );
    }

    #[test]
    fn messages_come_from_the_status_object() {
        let body = br#"{"kind":"Status","message":"pods \"x\" is forbidden","code":403}"#;
        assert_eq!(api_message(body), "pods \"x\" is forbidden");
        assert_eq!(api_message(b"  oops "), "oops");
        assert_eq!(api_message(b""), "no message");
    }
}
