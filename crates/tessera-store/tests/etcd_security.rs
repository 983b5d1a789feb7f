//! The etcd backend against a member that serves only TLS with client certificates, and one
//! with authentication enabled: the right settings work, wrong ones are refused with a
//! message that says what to fix, and an expired token is replaced without the caller seeing
//! it. Users and roles are set up with `etcdctl`, as an operator would.
//!
//! Certificates are made with the `openssl` command for each run. Without etcd (or openssl)
//! these tests print why and pass, except under `CI=true`, where they fail.

#![cfg(feature = "etcd")]

use std::path::Path;
use std::process::Command;

use tessera_store::local_etcd::{self, LocalEtcd, TlsFiles};
use tessera_store::{conformance, EtcdStore, Op, OpenOptions, Store, StoreError, TxnOutcome};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server and a client certificate it signed. `name` only changes the CA's
/// subject, so two calls give two unrelated CAs.
fn make_certs(dir: &Path, name: &str) -> TlsFiles {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_subj = format!("/CN={name}");
    let mut args = vec![
        "req", "-x509", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem",
    ];
    args.extend(ec);
    args.extend(["-subj", &ca_subj]);
    args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(dir, &args);
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, extfile) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        std::fs::write(dir.join(&extfile), ext).unwrap();
        let subj = format!("/CN=tessera-{who}");
        let mut args = vec!["req", "-keyout", &key, "-out", &csr, "-subj", &subj];
        args.extend(ec);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
    }
    TlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

fn have_tools(test: &str) -> bool {
    let openssl = Command::new("openssl").arg("version").output().is_ok();
    if local_etcd::binary().is_some() && openssl {
        return true;
    }
    assert!(
        !local_etcd::required(),
        "{test}: CI=true needs etcd and openssl (etcd-server and openssl packages)"
    );
    eprintln!("skipping {test}: etcd or openssl is not installed");
    false
}

fn refused(store: &dyn Store) -> String {
    // A read of a key: an empty read batch needs no permission at all.
    let err = store.get("config/ipam").unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    eprintln!("refused as expected: {err}");
    err.to_string()
}

#[test]
fn tls_with_client_certificates() {
    if !have_tools("tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let files = make_certs(&good, "tessera-test-ca");
    let stranger = make_certs(&other, "some-other-ca");
    let etcd = LocalEtcd::start_tls(files.clone()).expect("start etcd with TLS");
    let url = etcd.url();
    assert!(url.starts_with("etcds://127.0.0.1:"), "{url}");

    let store = etcd.store();
    conformance::compare_absent(&store);
    conformance::read_batch_is_one_snapshot(&store);

    // A CA that did not sign the server certificate.
    let wrong_ca = EtcdStore::open(
        &url,
        &OpenOptions {
            etcd_ca: Some(stranger.ca.clone()),
            ..etcd.options()
        },
    )
    .unwrap();
    let msg = refused(&wrong_ca);
    assert!(msg.contains("check --etcd-ca"), "{msg}");
    assert!(msg.contains(&url), "{msg}");

    // No client certificate, for a member that requires one.
    let anonymous = EtcdStore::open(
        &url,
        &OpenOptions {
            etcd_ca: Some(files.ca.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let err = anonymous.read(&[]).unwrap_err();
    eprintln!("without a client certificate: {err}");
    assert!(err.to_string().contains(&url), "{err}");

    // Plain gRPC to a TLS port.
    let plain =
        EtcdStore::open(&url.replace("etcds://", "etcd://"), &OpenOptions::default()).unwrap();
    assert!(plain.read(&[]).is_err());
}

/// Adds the root user, and a user `tessera` (password `s3cret`) allowed to read and write
/// under /tessera/v1/, then turns authentication on.
fn enable_auth(etcd: &LocalEtcd) {
    for args in [
        &["user", "add", "root:root-secret"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "tessera:s3cret"],
        &["role", "add", "tessera"],
        &[
            "role",
            "grant-permission",
            "tessera",
            "--prefix=true",
            "readwrite",
            "/tessera/v1/",
        ],
        &["user", "grant-role", "tessera", "tessera"],
        &["auth", "enable"],
    ] {
        etcd.etcdctl(args)
            .expect("set up authentication with etcdctl");
    }
}

#[test]
fn user_and_password() {
    let Some(etcd) = LocalEtcd::start_or_skip("authentication") else {
        return;
    };
    enable_auth(&etcd);
    let with = |user: Option<&str>, password: Option<&str>, prefix: Option<&str>| {
        EtcdStore::open(
            &etcd.url(),
            &OpenOptions {
                etcd_username: user.map(Into::into),
                etcd_password: password.map(Into::into),
                etcd_prefix: prefix.map(Into::into),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let store = with(Some("tessera"), Some("s3cret"), None);
    conformance::compare_absent(&store);
    conformance::read_batch_is_one_snapshot(&store);

    let msg = refused(&with(Some("tessera"), Some("wrong"), None));
    assert!(
        msg.contains("authentication failed") && msg.contains("check --etcd-username"),
        "{msg}"
    );
    let msg = refused(&with(None, None, None));
    assert!(
        msg.contains("set --etcd-username and --etcd-password"),
        "{msg}"
    );
    let msg = refused(&with(Some("tessera"), Some("s3cret"), Some("/elsewhere/")));
    assert!(msg.contains("permission denied"), "{msg}");
}

#[test]
fn expired_token_is_renewed() {
    if local_etcd::binary().is_none() {
        assert!(!local_etcd::required(), "CI=true needs etcd (etcd-server)");
        eprintln!("skipping expired_token_is_renewed: etcd is not installed");
        return;
    }
    // Tokens that live one second: the store's token expires between the two calls below.
    let etcd = LocalEtcd::start_with_args(1, &["--auth-token-ttl", "1"]).expect("start etcd");
    enable_auth(&etcd);
    let store = EtcdStore::open(
        &etcd.url(),
        &OpenOptions {
            etcd_username: Some("tessera".into()),
            etcd_password: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let put = |value: &[u8]| store.txn(&[], &[Op::Put("config/ipam".into(), value.to_vec())]);
    assert!(matches!(put(b"before"), Ok(TxnOutcome::Committed(_))));
    // etcd drops expired simple tokens once a second.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let kv = store
        .get("config/ipam")
        .expect("a read after the token expired");
    assert_eq!(kv.map(|kv| kv.value), Some(b"before".to_vec()));
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert!(matches!(put(b"after"), Ok(TxnOutcome::Committed(_))));
    let kv = store.get("config/ipam").unwrap();
    assert_eq!(kv.map(|kv| kv.value), Some(b"after".to_vec()));
}
