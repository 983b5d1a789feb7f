//! The client against a canned API server on 127.0.0.1, over http and https.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tessera_k8s_lookup::testing::{namespace_json, pod_json, FakeApiServer};
use tessera_k8s_lookup::{ApiAccess, Client, LookupError};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Writes a kubeconfig for `server` whose cluster and user sections hold `cluster_extra` and
/// `user_yaml` (indented lines).
fn kubeconfig(dir: &Path, server: &str, cluster_extra: &str, user_yaml: &str) -> PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: cni\ncontexts:\n- name: cni\n  context:\n    \
         cluster: local\n    user: tessera\nclusters:\n- name: local\n  cluster:\n    server: \
         {server}\n{cluster_extra}users:\n- name: tessera\n  user:\n{user_yaml}"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

fn client(path: &Path, timeout: Duration) -> Client {
    Client::new(ApiAccess::from_kubeconfig(path, None).unwrap(), timeout).unwrap()
}

fn serve_pod(server: &FakeApiServer) {
    server.set_pod(&pod_json(
        "web",
        "nginx-1",
        "uid-1",
        &[("app", "nginx")],
        &[("cni.projectcalico.org/ipv4pools", "[\"rack-a\"]")],
    ));
    server.set_namespace(&namespace_json("web", &[("team", "a")], &[]));
}

#[test]
fn reads_pod_and_namespace_over_http_with_the_bearer_token() {
    let server = FakeApiServer::start();
    serve_pod(&server);
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), &server.url(), "", "    token: s3cret\n");
    let (pod, ns) = client(&path, TIMEOUT)
        .pod_and_namespace("web", "nginx-1")
        .unwrap();
    assert_eq!(pod.metadata.uid, "uid-1");
    assert_eq!(pod.metadata.labels["app"], "nginx");
    assert_eq!(
        pod.metadata.annotations["cni.projectcalico.org/ipv4pools"],
        "[\"rack-a\"]"
    );
    assert_eq!(pod.metadata.owner_references[0].kind, "ReplicaSet");
    assert_eq!(pod.spec.node_name.as_deref(), Some("node-1"));
    assert_eq!(pod.status.phase.as_deref(), Some("Pending"));
    assert_eq!(ns.metadata.labels["team"], "a");
    let requests = server.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/web/pods/nginx-1",
            "/api/v1/namespaces/web"
        ]
    );
    assert!(requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer s3cret")));
}

#[test]
fn reads_the_job_the_pod_names_after_pod_and_namespace_and_says_when_it_is_missing() {
    let server = FakeApiServer::start();
    serve_pod(&server);
    let job = serde_json::json!({"metadata": {"name": "nightly-1", "namespace": "web",
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly"}]}});
    server.set(
        "/apis/batch/v1/namespaces/web/jobs/nightly-1",
        200,
        job.to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), &server.url(), "", "    token: s3cret\n");
    let c = client(&path, TIMEOUT);
    let (_, _, job) = c
        .pod_namespace_and_job("web", "nginx-1", |pod| {
            assert_eq!(pod.metadata.uid, "uid-1");
            Some("nightly-1".into())
        })
        .unwrap();
    assert_eq!(job.unwrap().metadata.owner_references[0].kind, "CronJob");
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths[2], "/apis/batch/v1/namespaces/web/jobs/nightly-1");
    let missing = c
        .pod_namespace_and_job("web", "nginx-1", |_| Some("gone".into()))
        .unwrap_err();
    assert!(
        missing.to_string().starts_with("job web/gone not found"),
        "{missing}"
    );
}

#[test]
fn reads_a_replica_set_and_its_deployment_owner() {
    let server = FakeApiServer::start();
    let rs = serde_json::json!({"metadata": {"name": "web-5d8f", "namespace": "web",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                             "controller": true}]}});
    server.set(
        "/apis/apps/v1/namespaces/web/replicasets/web-5d8f",
        200,
        rs.to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), &server.url(), "", "    token: s3cret\n");
    let c = client(&path, TIMEOUT);
    let got = c.replica_set("web", "web-5d8f").unwrap();
    let owner = &got.metadata.owner_references[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );
    let missing = c.replica_set("web", "gone").unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("replicaset web/gone not found"),
        "{missing}"
    );
}

#[test]
fn the_token_file_is_read_again_for_every_call() {
    let server = FakeApiServer::start();
    serve_pod(&server);
    let dir = tempfile::tempdir().unwrap();
    // A relative tokenFile resolves against the kubeconfig's directory.
    let path = kubeconfig(dir.path(), &server.url(), "", "    tokenFile: token\n");
    std::fs::write(dir.path().join("token"), "first\n").unwrap();
    let client = client(&path, TIMEOUT);
    client.namespace("web").unwrap();
    std::fs::write(dir.path().join("token"), "second\n").unwrap();
    client.namespace("web").unwrap();
    let sent: Vec<Option<String>> = server
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        sent,
        [Some("Bearer first".into()), Some("Bearer second".into())]
    );
    std::fs::remove_file(dir.path().join("token")).unwrap();
    let e = client.namespace("web").unwrap_err();
    assert!(
        matches!(&e, LookupError::KubeconfigField { field, .. }
            if field == "users[name=tessera].user.tokenFile"),
        "{e}"
    );
}

#[test]
fn not_found_and_forbidden_say_what_is_missing() {
    let server = FakeApiServer::start();
    server.set(
        "/api/v1/namespaces/web/pods/nginx-1",
        403,
        r#"{"kind":"Status","message":"pods \"nginx-1\" is forbidden: User \"system:serviceaccount:kube-system:tessera\" cannot get resource \"pods\"","code":403}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), &server.url(), "", "    token: t\n");
    let client = client(&path, TIMEOUT);
    let e = client.pod("web", "nginx-1").unwrap_err();
    assert!(matches!(e, LookupError::Refused { status: 403, .. }));
    let text = e.to_string();
    assert!(text.contains("refused to get pods (403)"), "{text}");
    assert!(text.contains("cannot get resource"), "{text}");
    assert!(text.contains("need RBAC permission to get pods"), "{text}");

    let e = client.pod("web", "gone").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "pod web/gone not found on the Kubernetes API server at {}",
            server.url()
        )
    );
    assert!(!e.is_transient());
}

#[test]
fn a_server_that_never_answers_fails_within_the_timeout() {
    let server = FakeApiServer::silent();
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), &server.url(), "", "    token: t\n");
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let e = client(&path, timeout)
        .pod_and_namespace("web", "nginx-1")
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_millis(600), "took {took:?}");
    assert!(took >= timeout, "took {took:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "the Kubernetes API server at {} did not answer within 400 ms",
            server.url()
        )
    );
    assert!(e.is_transient());
}

#[test]
fn a_closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), &format!("http://127.0.0.1:{port}"), "", "");
    let e = client(&path, TIMEOUT).namespace("web").unwrap_err();
    assert!(matches!(e, LookupError::Unreachable { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!(
        "cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
    )));
}

/// A CA, and a server certificate for 127.0.0.1 and a client certificate it signed, made with
/// openssl in `dir` (files `ca.crt`, `server.crt`, `client.crt`, `client.key`, ...).
struct Pki {
    ca_pem: Vec<u8>,
    /// The server, without client authentication.
    server: Arc<rustls::ServerConfig>,
    /// The server, requiring a client certificate signed by the CA.
    server_mtls: Arc<rustls::ServerConfig>,
}

/// Runs openssl in `dir` with `args` (split at spaces).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl must be installed for the TLS tests");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A key and a certificate `name.crt` signed by the CA, with the extensions `ext`.
fn signed(dir: &Path, name: &str, ext: &str) {
    openssl(
        dir,
        &format!("req {EC_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name}"),
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt \
             -days 2 -extfile {name}.ext"
        ),
    );
}

fn make_pki(dir: &Path) -> Pki {
    openssl(
        dir,
        &format!(
            "req -x509 {EC_KEY} -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca -addext \
             basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
    );
    let leaf = "basicConstraints=CA:FALSE\n";
    signed(
        dir,
        "server",
        &format!("subjectAltName=IP:127.0.0.1,DNS:localhost\n{leaf}"),
    );
    signed(
        dir,
        "client",
        &format!("extendedKeyUsage=clientAuth\n{leaf}"),
    );
    let certs = |file: &str| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(dir.join(file))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
    };
    let key = || PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let server = builder()
        .with_no_client_auth()
        .with_single_cert(certs("server.crt"), key())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs("ca.crt"));
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_mtls = builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("server.crt"), key())
        .unwrap();
    Pki {
        ca_pem: std::fs::read(dir.join("ca.crt")).unwrap(),
        server: Arc::new(server),
        server_mtls: Arc::new(server_mtls),
    }
}

#[test]
fn https_trusts_the_kubeconfig_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = FakeApiServer::start_tls(pki.server.clone());
    serve_pod(&server);
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
    let extra = format!("    certificate-authority-data: {data}\n");
    let path = kubeconfig(dir.path(), &server.url(), &extra, "    token: t\n");
    let (pod, _) = client(&path, TIMEOUT)
        .pod_and_namespace("web", "nginx-1")
        .unwrap();
    assert_eq!(pod.metadata.uid, "uid-1");

    // The same CA as a file named relative to the kubeconfig.
    let path = kubeconfig(
        dir.path(),
        &server.url(),
        "    certificate-authority: ca.crt\n",
        "    token: t\n",
    );
    client(&path, TIMEOUT).namespace("web").unwrap();

    // Another CA: the server's certificate is refused.
    let other = tempfile::tempdir().unwrap();
    let other_ca = make_pki(other.path()).ca_pem;
    std::fs::write(dir.path().join("other-ca.crt"), other_ca).unwrap();
    let path = kubeconfig(
        dir.path(),
        &server.url(),
        "    certificate-authority: other-ca.crt\n",
        "",
    );
    let e = client(&path, TIMEOUT).namespace("web").unwrap_err();
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");

    // insecure-skip-tls-verify: no CA needed.
    let path = kubeconfig(
        dir.path(),
        &server.url(),
        "    insecure-skip-tls-verify: true\n",
        "",
    );
    client(&path, TIMEOUT).namespace("web").unwrap();
}

#[test]
fn the_api_root_overrides_the_kubeconfig_server() {
    let server = FakeApiServer::start();
    serve_pod(&server);
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), "http://127.0.0.1:1", "", "    token: t\n");
    let access =
        ApiAccess::from_kubeconfig(&path, Some((&server.url(), "kubernetes.k8s_api_root")))
            .unwrap();
    let client = Client::new(access, TIMEOUT).unwrap();
    client.namespace("web").unwrap();
    // Without a kubeconfig: plain http, no credentials.
    let access = ApiAccess::anonymous(&server.url(), "kubernetes.k8s_api_root").unwrap();
    Client::new(access, TIMEOUT)
        .unwrap()
        .namespace("web")
        .unwrap();
    assert_eq!(server.requests()[1].authorization, None);
}

#[test]
fn https_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = FakeApiServer::start_tls(pki.server_mtls.clone());
    serve_pod(&server);
    let ca = "    certificate-authority: ca.crt\n";
    // Files named relative to the kubeconfig, and the same as inline data.
    let files = "    client-certificate: client.crt\n    client-key: client.key\n";
    let path = kubeconfig(dir.path(), &server.url(), ca, files);
    client(&path, TIMEOUT).namespace("web").unwrap();
    use base64::Engine as _;
    let b64 = |f: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.path().join(f)).unwrap())
    };
    let data = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        b64("client.crt"),
        b64("client.key")
    );
    let path = kubeconfig(dir.path(), &server.url(), ca, &data);
    client(&path, TIMEOUT).namespace("web").unwrap();
    // Without the certificate the server refuses the handshake.
    let path = kubeconfig(dir.path(), &server.url(), ca, "    token: t\n");
    let e = client(&path, TIMEOUT).namespace("web").unwrap_err();
    assert!(matches!(e, LookupError::Unreachable { .. }), "{e}");
}
