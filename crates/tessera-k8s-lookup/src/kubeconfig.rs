//! Reading a kubeconfig: the current context's cluster (server, certificate authority) and
//! user (token, token file, client certificate), as kubectl reads them. Relative file names
//! resolve against the kubeconfig's directory.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::error::LookupError;

/// Where the API server is and how to talk to it.
#[derive(Debug)]
pub struct ApiAccess {
    /// The API server's address.
    pub server: ServerUrl,
    /// Certificate authorities to trust for an `https` server; empty for `http`.
    pub roots: Vec<CertificateDer<'static>>,
    /// `insecure-skip-tls-verify`: the server's certificate is not checked.
    pub insecure: bool,
    /// `tls-server-name`: the name the certificate must carry, when not the server's host.
    pub tls_server_name: Option<String>,
    /// Client certificate chain and key, for clusters that authenticate by certificate.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Bearer token, if any.
    pub token: Option<Token>,
}

/// A bearer token, given inline or in a file.
#[derive(Clone, Debug)]
pub enum Token {
    /// `token`.
    Inline(String),
    /// `tokenFile`: read again for every request, since bound service-account tokens are
    /// rotated in place.
    File {
        /// The token file, resolved against the kubeconfig's directory.
        path: PathBuf,
        /// The kubeconfig naming it, for errors.
        kubeconfig: PathBuf,
        /// The field naming it, for errors.
        field: String,
    },
}

impl Token {
    /// The token's current value.
    pub fn value(&self) -> Result<String, LookupError> {
        match self {
            Token::Inline(t) => Ok(t.clone()),
            Token::File {
                path,
                kubeconfig,
                field,
            } => {
                let problem = |p: String| LookupError::KubeconfigField {
                    path: kubeconfig.clone(),
                    field: field.clone(),
                    problem: p,
                };
                let text = std::fs::read_to_string(path)
                    .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(problem(format!("token file {} is empty", path.display())));
                }
                Ok(token.to_string())
            }
        }
    }
}

/// An `http://` or `https://` API server address, possibly with a path prefix
/// (`https://rancher.example/k8s/clusters/c-1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// `https`.
    pub https: bool,
    /// Host name or address (without IPv6 brackets).
    pub host: String,
    /// Port (443 or 80 when not given).
    pub port: u16,
    /// Path prefix without a trailing `/`.
    pub base_path: String,
}

impl ServerUrl {
    /// Parses `text`, given in `source_field`.
    pub fn parse(text: &str, source_field: &str) -> Result<Self, LookupError> {
        let bad = |problem: &str| LookupError::BadServer {
            server: text.to_string(),
            source_field: source_field.to_string(),
            problem: problem.to_string(),
        };
        let uri: http::Uri = text
            .trim()
            .parse()
            .map_err(|_| bad("it is not a URL such as https://10.96.0.1:443"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("it must start with https:// or http://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("it names no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.query().is_some() {
            return Err(bad("it must not have a query (?...)"));
        }
        Ok(Self {
            https,
            host,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.base_path)
    }
}

impl ApiAccess {
    /// Access without credentials to `server` (given in `source_field`): for an `http://`
    /// server such as a local proxy. An `https://` server needs a kubeconfig naming its
    /// certificate authority.
    pub fn anonymous(server: &str, source_field: &str) -> Result<Self, LookupError> {
        let server = ServerUrl::parse(server, source_field)?;
        if server.https {
            return Err(LookupError::BadServer {
                server: server.to_string(),
                source_field: source_field.to_string(),
                problem: "an https:// server needs a kubeconfig naming its certificate \
                          authority and credentials; set kubernetes.kubeconfig"
                    .into(),
            });
        }
        Ok(Self {
            server,
            roots: Vec::new(),
            insecure: false,
            tls_server_name: None,
            identity: None,
            token: None,
        })
    }

    /// Reads the kubeconfig at `path`; `server_override` (given in `override_field`)
    /// replaces its cluster's `server`, as kubectl's `--server` does.
    pub fn from_kubeconfig(
        path: &Path,
        server_override: Option<(&str, &str)>,
    ) -> Result<Self, LookupError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LookupError::KubeconfigUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
        let doc: Kubeconfig =
            serde_saphyr::from_str(&text).map_err(|e| LookupError::KubeconfigSyntax {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Resolver {
            path,
            dir: path.parent().unwrap_or(Path::new(".")),
        }
        .resolve(&doc, server_override)
    }
}

/// The kubeconfig fields read; the rest (preferences, extensions) is skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: Option<String>,
    #[serde(default)]
    contexts: Option<Vec<Named<ContextEntry>>>,
    #[serde(default)]
    clusters: Option<Vec<Named<ClusterEntry>>>,
    #[serde(default)]
    users: Option<Vec<Named<UserEntry>>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    #[serde(default)]
    body: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
struct ContextEntry {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: Option<bool>,
    #[serde(default)]
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    client_key_data: Option<String>,
    #[serde(default)]
    exec: Option<serde_json::Value>,
    #[serde(default)]
    auth_provider: Option<serde_json::Value>,
}

/// Turns the parsed document into [`ApiAccess`], naming the field of every problem.
struct Resolver<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Resolver<'_> {
    fn problem(&self, field: impl Into<String>, problem: impl Into<String>) -> LookupError {
        LookupError::KubeconfigField {
            path: self.path.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The entry named `name` in `list` (`what`: `contexts`, `clusters`, `users`).
    fn entry<'d, T: Default>(
        &self,
        list: &'d Option<Vec<Named<T>>>,
        what: &str,
        name: &str,
        named_in: &str,
    ) -> Result<Option<&'d T>, LookupError> {
        let found = list.iter().flatten().find(|e| e.name == name);
        match found {
            Some(e) => Ok(e.body.as_ref()),
            None => Err(self.problem(
                named_in,
                format!("names {what} entry {name:?}, but {what} has no entry of that name"),
            )),
        }
    }

    fn resolve(
        &self,
        doc: &Kubeconfig,
        server_override: Option<(&str, &str)>,
    ) -> Result<ApiAccess, LookupError> {
        let context_name = doc
            .current_context
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                self.problem(
                    "current-context",
                    "missing; set it to the context the plugin uses (kubectl config \
                     use-context NAME --kubeconfig FILE)",
                )
            })?;
        let context = self
            .entry(&doc.contexts, "contexts", context_name, "current-context")?
            .ok_or_else(|| {
                self.problem(format!("contexts[name={context_name}]"), "has no context")
            })?;
        let context_field = format!("contexts[name={context_name}].context");
        let cluster_name = context
            .cluster
            .as_deref()
            .ok_or_else(|| self.problem(format!("{context_field}.cluster"), "missing"))?;
        let cluster_field = format!("clusters[name={cluster_name}].cluster");
        let cluster = self
            .entry(
                &doc.clusters,
                "clusters",
                cluster_name,
                &format!("{context_field}.cluster"),
            )?
            .ok_or_else(|| self.problem(&cluster_field, "missing"))?;
        let user = match context.user.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(name) => {
                let named_in = format!("{context_field}.user");
                let entry = self.entry(&doc.users, "users", name, &named_in)?;
                Some((format!("users[name={name}].user"), entry))
            }
        };

        let server = match server_override {
            Some((text, field)) => ServerUrl::parse(text, field)?,
            None => {
                let field = format!("kubeconfig {}, {cluster_field}.server", self.path.display());
                let text = cluster
                    .server
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| self.problem(format!("{cluster_field}.server"), "missing"))?;
                ServerUrl::parse(text, &field)?
            }
        };
        let mut access = ApiAccess {
            roots: self.roots(cluster, &cluster_field)?,
            insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
            tls_server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
            identity: None,
            token: None,
            server,
        };
        if access.server.https && access.roots.is_empty() && !access.insecure {
            return Err(self.problem(
                &cluster_field,
                "has neither certificate-authority nor certificate-authority-data for its \
                 https server; add the cluster's CA (for a service account: \
                 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)",
            ));
        }
        if let Some((field, Some(user))) = &user {
            self.read_user(user, field, &mut access)?;
        }
        Ok(access)
    }

    fn roots(
        &self,
        cluster: &ClusterEntry,
        field: &str,
    ) -> Result<Vec<CertificateDer<'static>>, LookupError> {
        let Some((pem, field)) = self.pem(
            cluster.certificate_authority_data.as_deref(),
            cluster.certificate_authority.as_deref(),
            field,
            "certificate-authority",
        )?
        else {
            return Ok(Vec::new());
        };
        self.certificates(&pem, &field)
    }

    fn certificates(
        &self,
        pem: &[u8],
        field: &str,
    ) -> Result<Vec<CertificateDer<'static>>, LookupError> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| self.problem(field, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(self.problem(field, "holds no PEM certificate"));
        }
        Ok(certs)
    }

    /// PEM text from `<name>-data` (base64, wins as with kubectl) or the file `<name>`;
    /// with the field it came from.
    fn pem(
        &self,
        data: Option<&str>,
        file: Option<&str>,
        field: &str,
        name: &str,
    ) -> Result<Option<(Vec<u8>, String)>, LookupError> {
        if let Some(data) = data.filter(|d| !d.trim().is_empty()) {
            let field = format!("{field}.{name}-data");
            let compact: String = data.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| self.problem(&field, format!("not base64: {e}")))?;
            return Ok(Some((bytes, field)));
        }
        let Some(file) = file.filter(|f| !f.is_empty()) else {
            return Ok(None);
        };
        let field = format!("{field}.{name}");
        let path = self.dir.join(file);
        let bytes = std::fs::read(&path)
            .map_err(|e| self.problem(&field, format!("cannot read {}: {e}", path.display())))?;
        Ok(Some((bytes, field)))
    }

    fn read_user(
        &self,
        user: &UserEntry,
        field: &str,
        access: &mut ApiAccess,
    ) -> Result<(), LookupError> {
        for (given, key) in [
            (user.exec.is_some(), "exec"),
            (user.auth_provider.is_some(), "auth-provider"),
        ] {
            if given {
                return Err(self.problem(
                    format!("{field}.{key}"),
                    "credential plugins are not supported by tessera-ipam; use token, \
                     tokenFile or a client certificate",
                ));
            }
        }
        access.token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Some(Token::Inline(t.trim().to_string())),
            (_, Some(f)) if !f.is_empty() => Some(Token::File {
                path: self.dir.join(f),
                kubeconfig: self.path.to_path_buf(),
                field: format!("{field}.tokenFile"),
            }),
            _ => None,
        };
        let cert = self.pem(
            user.client_certificate_data.as_deref(),
            user.client_certificate.as_deref(),
            field,
            "client-certificate",
        )?;
        let key = self.pem(
            user.client_key_data.as_deref(),
            user.client_key.as_deref(),
            field,
            "client-key",
        )?;
        access.identity = match (cert, key) {
            (None, None) => None,
            (Some((cert, cert_field)), Some((key, key_field))) => {
                let chain = self.certificates(&cert, &cert_field)?;
                let key = PrivateKeyDer::from_pem_slice(&key)
                    .map_err(|e| self.problem(&key_field, format!("not a PEM private key: {e}")))?;
                Some((chain, key))
            }
            (Some(_), None) => {
                return Err(self.problem(
                    field,
                    "has a client certificate but no client-key or client-key-data",
                ))
            }
            (None, Some(_)) => {
                return Err(self.problem(
                    field,
                    "has a client key but no client-certificate or client-certificate-data",
                ))
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ApiAccess, LookupError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        ApiAccess::from_kubeconfig(&path, None)
    }

    /// The message of an error without the temporary kubeconfig path.
    fn problem(e: LookupError) -> String {
        match e {
            LookupError::KubeconfigField { field, problem, .. } => format!("{field}: {problem}"),
            other => other.to_string(),
        }
    }

    const BASE: &str =
        "current-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\n\
                        clusters:\n- name: k\n  cluster: {server: 'http://10.0.0.1:8080/prefix/'}\n\
                        users:\n- name: u\n  user: {token: abc}\n";

    #[test]
    fn the_current_context_picks_cluster_and_user() {
        let a = read(BASE).unwrap();
        assert_eq!(a.server.to_string(), "http://10.0.0.1:8080/prefix");
        assert_eq!(a.server.base_path, "/prefix");
        assert!(matches!(a.token, Some(Token::Inline(ref t)) if t == "abc"));
        assert!(a.identity.is_none() && a.roots.is_empty());
    }

    #[test]
    fn servers_default_their_port_and_accept_ipv6() {
        let s = ServerUrl::parse("https://[fd00::1]", "f").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("fd00::1", 443));
        assert_eq!(s.to_string(), "https://[fd00::1]:443");
        let e = ServerUrl::parse("10.0.0.1:6443", "kubernetes.k8s_api_root").unwrap_err();
        assert_eq!(
            e.to_string(),
            "API server address \"10.0.0.1:6443\" (kubernetes.k8s_api_root) is not usable: it \
             must start with https:// or http://"
        );
    }

    #[test]
    fn missing_entries_name_the_field() {
        let e = read(&BASE.replace("current-context: c", "current-context: d")).unwrap_err();
        assert_eq!(
            problem(e),
            "current-context: names contexts entry \"d\", but contexts has no entry of that name"
        );
        let e = read(&BASE.replace("user: u}", "user: v}")).unwrap_err();
        assert_eq!(
            problem(e),
            "contexts[name=c].context.user: names users entry \"v\", but users has no entry of \
             that name"
        );
        let e = read(&BASE.replace("current-context: c\n", "")).unwrap_err();
        assert!(problem(e).starts_with("current-context: missing;"));
        let e = read(&BASE.replace("{server: 'http://10.0.0.1:8080/prefix/'}", "{}")).unwrap_err();
        assert_eq!(problem(e), "clusters[name=k].cluster.server: missing");
    }

    #[test]
    fn https_needs_a_certificate_authority() {
        let text = BASE.replace("http://10.0.0.1:8080/prefix/", "https://10.0.0.1:6443");
        let e = read(&text).unwrap_err();
        assert!(problem(e).starts_with(
            "clusters[name=k].cluster: has neither certificate-authority nor \
                 certificate-authority-data"
        ));
        let e = read(&text.replace("{server:", "{certificate-authority-data: '%%%', server:"))
            .unwrap_err();
        assert!(problem(e)
            .starts_with("clusters[name=k].cluster.certificate-authority-data: not base64"),);
        let e = read(&text.replace("{server:", "{certificate-authority: nope.crt, server:"))
            .unwrap_err();
        let text = problem(e);
        assert!(
            text.starts_with("clusters[name=k].cluster.certificate-authority: cannot read /")
                && text.contains("nope.crt"),
            "{text}"
        );
    }

    #[test]
    fn unsupported_and_half_credentials_are_refused() {
        let e = read(&BASE.replace("{token: abc}", "{exec: {command: aws}}")).unwrap_err();
        assert!(problem(e).starts_with(
            "users[name=u].user.exec: credential plugins are not supported by tessera-ipam"
        ));
        let e = read(&BASE.replace("{token: abc}", "{client-certificate-data: eA==}")).unwrap_err();
        assert_eq!(
            problem(e),
            "users[name=u].user: has a client certificate but no client-key or client-key-data"
        );
    }

    #[test]
    fn syntax_errors_and_missing_files_say_so() {
        let e = read("current-context: [").unwrap_err();
        assert!(matches!(e, LookupError::KubeconfigSyntax { .. }), "{e}");
        let e = ApiAccess::from_kubeconfig(Path::new("/nonexistent/kubeconfig"), None).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot read kubeconfig /nonexistent/kubeconfig:"));
    }

    #[test]
    fn anonymous_access_is_for_http_only() {
        assert!(ApiAccess::anonymous("http://127.0.0.1:8001", "kubernetes.k8s_api_root").is_ok());
        let e = ApiAccess::anonymous("https://10.0.0.1", "kubernetes.k8s_api_root").unwrap_err();
        assert!(e.to_string().contains("set kubernetes.kubeconfig"), "{e}");
    }
}
