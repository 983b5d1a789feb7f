//! Datastore URLs, and which datastore applies when.

use std::path::PathBuf;

use tessera_store::{
    default_datastore, default_datastore_from, open, resolve_datastore_from, Location, Op,
    OpenError, StoreError, TxnOutcome, ROOT_DATASTORE,
};

const FORMS: &str = "accepted forms: a file path, sqlite:PATH, sqlite:///ABSOLUTE/PATH, memory, \
     or etcd://HOST:PORT[,HOST:PORT] (etcds:// for TLS); set it with --datastore or \
     TESSERA_DATASTORE";

fn open_err(url: &str) -> OpenError {
    match open(url) {
        Ok(store) => panic!("{url:?} opened as {}", store.describe()),
        Err(e) => e,
    }
}

#[test]
fn parses_every_accepted_form() {
    let sqlite = |p: &str| Ok(Location::Sqlite(PathBuf::from(p)));
    for (url, want) in [
        (
            "/var/lib/tessera/tessera.db",
            sqlite("/var/lib/tessera/tessera.db"),
        ),
        ("tessera.db", sqlite("tessera.db")),
        ("./data/t.db", sqlite("./data/t.db")),
        ("./odd:name.db", sqlite("./odd:name.db")),
        ("sqlite:/abs/t.db", sqlite("/abs/t.db")),
        ("sqlite:rel/t.db", sqlite("rel/t.db")),
        ("sqlite:///abs/t.db", sqlite("/abs/t.db")),
        ("sqlite:odd:name.db", sqlite("odd:name.db")),
        ("memory", Ok(Location::Memory)),
        ("memory:", Ok(Location::Memory)),
        (
            "etcd://10.0.0.1:2379",
            Ok(Location::Etcd("etcd://10.0.0.1:2379".into())),
        ),
        (
            "etcds://a:2379,b:2379",
            Ok(Location::Etcd("etcds://a:2379,b:2379".into())),
        ),
    ] {
        let got = Location::parse(url).map_err(|e| e.to_string());
        assert_eq!(got, want, "parsing {url:?}");
    }
}

#[test]
fn rejects_malformed_urls_with_the_accepted_forms() {
    for (url, reason) in [
        ("", "it is empty"),
        ("  ", "it is empty"),
        ("sqlite:", "sqlite: must be followed by a file path"),
        (
            "sqlite://rel/t.db",
            "sqlite:// must be followed by an absolute path (sqlite:///var/lib/x.db); for a \
             relative path write sqlite:PATH",
        ),
        ("postgres://db", "unknown scheme \"postgres\""),
        (
            "sqlit:/x.db",
            "unknown scheme \"sqlit\" (for a file whose name contains ':', write ./sqlit:/x.db \
             or sqlite:sqlit:/x.db)",
        ),
        ("memory:extra", "unknown scheme \"memory\" (for a file whose name contains ':', write ./memory:extra or sqlite:memory:extra)"),
    ] {
        let err = open_err(url);
        assert!(matches!(err, OpenError::BadUrl { .. }), "{url:?}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("datastore {url:?} is not a valid datastore URL: {reason}; {FORMS}")
        );
    }
}

#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_urls_say_etcd_is_not_built_in() {
    for url in ["etcd://127.0.0.1:2379", "etcds://a:2379,b:2379"] {
        let err = open_err(url);
        assert!(matches!(err, OpenError::EtcdNotBuilt { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "datastore {url:?} is an etcd cluster, but this binary was built without etcd \
                 support (cargo feature `etcd` of tessera-store); use a build with it, or a \
                 SQLite file (for example --datastore /var/lib/tessera/tessera.db)"
            )
        );
    }
}

/// Opening an etcd store sends nothing, so it works without a cluster.
#[cfg(feature = "etcd")]
#[test]
fn etcd_urls_open_without_contacting_the_cluster() {
    let store = tessera_store::open("etcd://127.0.0.1:2379,[::1]").unwrap();
    assert_eq!(store.describe(), "etcd://127.0.0.1:2379,[::1]:2379");
    let err = tessera_store::open("etcds://a:2379").err().unwrap();
    assert!(matches!(err, OpenError::InvalidOptions { .. }), "{err:?}");
}

/// The options deserialize from a CNI-style JSON object, with Calico's field names too, and
/// ignore the fields around them (so a config struct can flatten them in).
#[test]
fn open_options_deserialize_from_cni_style_config() {
    let options: tessera_store::OpenOptions = serde_json::from_str(
        r#"{"type": "tessera-ipam", "datastore": "etcds://10.0.0.1:2379",
            "etcd_ca_cert_file": "/etc/ca.pem", "etcd_cert": "/etc/c.pem",
            "etcd_key_file": "/etc/k.pem", "etcd_username": "u", "etcd_password": "p",
            "etcd_prefix": "/x/", "etcd_timeout_ms": 2500}"#,
    )
    .unwrap();
    assert_eq!(
        options,
        tessera_store::OpenOptions {
            etcd_ca: Some("/etc/ca.pem".into()),
            etcd_cert: Some("/etc/c.pem".into()),
            etcd_key: Some("/etc/k.pem".into()),
            etcd_username: Some("u".into()),
            etcd_password: Some("p".into()),
            etcd_prefix: Some("/x/".into()),
            etcd_timeout_ms: Some(2500),
        }
    );
    let none: tessera_store::OpenOptions = serde_json::from_str("{}").unwrap();
    assert_eq!(none, tessera_store::OpenOptions::default());
}

/// Etcd settings with a store that is not etcd are a mistake worth reporting.
#[test]
fn etcd_options_with_another_store_are_refused() {
    let options = tessera_store::OpenOptions {
        etcd_username: Some("u".into()),
        etcd_password: Some("p".into()),
        ..Default::default()
    };
    let err = tessera_store::open_with("memory", &options).err().unwrap();
    assert_eq!(
        err.to_string(),
        "invalid datastore options: --etcd-username (etcd_username), --etcd-password \
         (etcd_password) apply only to etcd datastores (etcd:// or etcds://), but the datastore \
         is \"memory\"; remove them, or point the datastore at the etcd cluster"
    );
}

#[test]
fn memory_urls_give_fresh_stores() {
    let a = open("memory").unwrap();
    let b = open("memory:").unwrap();
    assert_eq!(a.describe(), "memory");
    let out = a.txn(&[], &[Op::Put("/k".into(), b"v".to_vec())]).unwrap();
    assert_eq!(out, TxnOutcome::Committed(1));
    assert_eq!(
        b.get("/k").unwrap(),
        None,
        "each memory URL opens its own store"
    );
}

#[test]
fn sqlite_url_forms_open_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("tessera.db");
    let p = path.to_str().unwrap();
    let plain = open(p).unwrap();
    plain
        .txn(&[], &[Op::Put("/k".into(), b"v".to_vec())])
        .unwrap();
    for url in [
        format!("sqlite:{p}"),
        format!("sqlite://{p}"),
        p.to_string(),
    ] {
        let store = open(&url).unwrap();
        assert_eq!(store.describe(), format!("sqlite:{p}"), "{url}");
        assert_eq!(store.get("/k").unwrap().unwrap().value, b"v", "{url}");
    }
}

#[test]
fn store_errors_pass_through_open() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, "not a database at all".repeat(30)).unwrap();
    let err = open_err(&format!("sqlite:{}", garbage.display()));
    assert!(
        matches!(err, OpenError::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(garbage.to_str().unwrap()));
}

#[test]
fn resolve_prefers_flag_then_env_then_default() {
    let d = "/default.db";
    assert_eq!(
        resolve_datastore_from(Some("/flag.db"), Some("/env.db"), d),
        "/flag.db"
    );
    assert_eq!(resolve_datastore_from(None, Some("/env.db"), d), "/env.db");
    assert_eq!(resolve_datastore_from(None, None, d), d);
    assert_eq!(
        resolve_datastore_from(Some(""), Some("/env.db"), d),
        "/env.db"
    );
    assert_eq!(
        resolve_datastore_from(None, Some(""), d),
        d,
        "an empty variable counts as unset"
    );
    assert_eq!(resolve_datastore_from(Some("memory"), None, d), "memory");
}

#[test]
fn default_is_system_for_root_and_per_user_otherwise() {
    assert_eq!(
        default_datastore_from(true, Some("/x"), Some("/home/a")),
        ROOT_DATASTORE
    );
    assert_eq!(
        default_datastore_from(false, Some("/xdg/data/"), Some("/home/a")),
        "/xdg/data/tessera/tessera.db"
    );
    assert_eq!(
        default_datastore_from(false, None, Some("/home/a")),
        "/home/a/.local/share/tessera/tessera.db"
    );
    assert_eq!(
        default_datastore_from(false, Some("relative/xdg"), Some("/home/a")),
        "/home/a/.local/share/tessera/tessera.db",
        "a relative XDG_DATA_HOME is ignored, as the XDG spec says"
    );
    assert_eq!(
        default_datastore_from(false, Some(""), Some("/home/a/")),
        "/home/a/.local/share/tessera/tessera.db"
    );
    assert_eq!(default_datastore_from(false, None, None), "tessera.db");
    assert_eq!(default_datastore_from(false, None, Some("")), "tessera.db");
}

#[test]
fn default_follows_the_effective_user() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let got = default_datastore();
    if root {
        assert_eq!(got, ROOT_DATASTORE);
    } else {
        assert!(
            got.ends_with("tessera/tessera.db") || got == "tessera.db",
            "{got}"
        );
    }
}
