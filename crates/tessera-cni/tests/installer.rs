//! The node installer of the tessera-node DaemonSet (`images/install-cni.sh`), run with `sh`
//! against a temporary directory laid out as the DaemonSet's pod sees a node: the image's
//! plugin binary, the ConfigMap's template (the real one of deploy/40-cni-config.yaml), a fake
//! projected service-account volume and the host's CNI directories, which already hold files
//! of other plugins.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../images/install-cni.sh");
const CNI_CONFIG_MAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/40-cni-config.yaml"
);

/// Where the test's host directories stand for /etc/cni/net.d and /opt/cni/bin.
const NET_DIR: &str = "host/etc/cni/net.d";
const BIN_DIR: &str = "host/opt/cni/bin";
/// The directory as the node sees it, which the written files name.
const NET_DIR_ON_HOST: &str = "/etc/cni/net.d";

/// A node and the DaemonSet pod's view of it, in a temporary directory.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let node = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        node.write("image/tessera-ipam", "plugin v1");
        node.write("template/conflist.template", &shipped_template());
        node.write("sa/token", "token-1");
        node.write("sa/ca.crt", "-----BEGIN CERTIFICATE-----\nca\n");
        node.write(&format!("{BIN_DIR}/bridge"), "bridge plugin");
        node.write(
            &format!("{NET_DIR}/05-other.conflist"),
            "{\"name\": \"other\"}",
        );
        node
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.path(relative))
            .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
    }

    fn mode(&self, relative: &str) -> u32 {
        fs::metadata(self.path(relative))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    fn inode(&self, relative: &str) -> u64 {
        fs::metadata(self.path(relative)).unwrap().ino()
    }

    /// Replaces the projected token the way the kubelet does: a new file renamed over it.
    fn rotate_token(&self, token: &str) {
        self.write("sa/.token.new", token);
        fs::rename(self.path("sa/.token.new"), self.path("sa/token")).unwrap();
    }

    /// The script with the DaemonSet's settings pointed at this directory, and nothing else
    /// of the test's environment.
    fn installer(&self) -> Command {
        let mut command = Command::new("sh");
        command
            .arg(SCRIPT)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NODE_NAME", "rack1-node2")
            .env(
                "TESSERA_DATASTORE",
                "etcd://192.0.2.11:6666,192.0.2.12:6666",
            )
            .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            .env("KUBERNETES_SERVICE_PORT", "443")
            .env("TESSERA_IPAM_BINARY", self.path("image/tessera-ipam"))
            .env("CNI_BIN_DIR", self.path(BIN_DIR))
            .env("CNI_NET_DIR", self.path(NET_DIR))
            .env("CNI_NET_DIR_ON_HOST", NET_DIR_ON_HOST)
            .env("CNI_CONF_TEMPLATE", self.path("template/conflist.template"))
            .env("SERVICE_ACCOUNT_DIR", self.path("sa"))
            .stdin(Stdio::null());
        command
    }

    fn install_once(&self, configure: impl FnOnce(&mut Command)) -> Output {
        let mut command = self.installer();
        command.arg("--once");
        configure(&mut command);
        command.output().expect("sh runs")
    }

    /// Starts the installer with its refresh loop (every second) and waits until it has
    /// installed.
    fn start_loop(&self, configure: impl FnOnce(&mut Command)) -> Child {
        let mut command = self.installer();
        command
            .env("TOKEN_REFRESH_SECONDS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut command);
        let child = command.spawn().unwrap();
        let conflist = self.path(&format!("{NET_DIR}/10-tessera.conflist"));
        wait_for("conflist", Duration::from_secs(20), || conflist.exists());
        child
    }

    fn conflist(&self) -> Value {
        let text = self.read(&format!("{NET_DIR}/10-tessera.conflist"));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("conflist is not JSON ({e}):\n{text}"))
    }

    /// Every file under the host directories: path → (content, mode).
    fn host_files(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        let mut files = BTreeMap::new();
        collect_files(self.dir.path(), &self.path("host"), &mut files);
        files
    }
}

fn collect_files(root: &Path, dir: &Path, files: &mut BTreeMap<String, (Vec<u8>, u32)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(root, &path, files);
        } else {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            let name = path.strip_prefix(root).unwrap().display().to_string();
            files.insert(name, (fs::read(&path).unwrap(), mode));
        }
    }
}

/// The template the tessera-cni-config ConfigMap ships.
fn shipped_template() -> String {
    let text = fs::read_to_string(CNI_CONFIG_MAP).unwrap();
    let config_map: Value = serde_saphyr::from_str(&text).unwrap();
    config_map["data"]["conflist.template"]
        .as_str()
        .expect("deploy/40-cni-config.yaml has data.conflist.template")
        .to_string()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "installer failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The ipam section of the conflist's first plugin.
fn ipam(conflist: &Value) -> &Value {
    &conflist["plugins"][0]["ipam"]
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        sleep(Duration::from_millis(100));
    }
}

/// Ends the installer's loop as the kubelet does, with SIGTERM, and returns its exit code and
/// what it logged.
fn stop(mut child: Child) -> (Option<i32>, String) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with the id of a child this test started and has not yet waited for.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
            }
            return (status.code(), log);
        }
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the installer did not stop within 10 s of SIGTERM");
        }
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn installs_the_plugin_the_conflist_and_a_kubeconfig_and_touches_nothing_else() {
    let node = Node::new();
    let before = node.host_files();
    assert_success(&node.install_once(|_| {}));

    assert_eq!(node.read(&format!("{BIN_DIR}/tessera-ipam")), "plugin v1");
    assert_eq!(node.mode(&format!("{BIN_DIR}/tessera-ipam")), 0o755);

    let conflist = node.conflist();
    assert_eq!(ipam(&conflist)["type"], "tessera-ipam");
    assert_eq!(ipam(&conflist)["nodename"], "rack1-node2");
    assert_eq!(
        ipam(&conflist)["datastore"],
        "etcd://192.0.2.11:6666,192.0.2.12:6666"
    );
    assert!(
        ipam(&conflist).get("etcd_ca").is_none(),
        "no TLS settings, no TLS fields: {conflist}"
    );
    assert_eq!(
        conflist["plugins"][0]["kubernetes"]["kubeconfig"],
        "/etc/cni/net.d/tessera-kubeconfig"
    );
    assert_eq!(node.mode(&format!("{NET_DIR}/10-tessera.conflist")), 0o644);

    let kubeconfig: Value =
        serde_saphyr::from_str(&node.read(&format!("{NET_DIR}/tessera-kubeconfig"))).unwrap();
    assert_eq!(node.mode(&format!("{NET_DIR}/tessera-kubeconfig")), 0o600);
    assert_eq!(kubeconfig["current-context"], "tessera-ipam");
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], "https://10.96.0.1:443");
    assert_eq!(
        cluster["certificate-authority"],
        "/etc/cni/net.d/tessera-ca.crt"
    );
    assert_eq!(
        kubeconfig["users"][0]["user"]["tokenFile"],
        "/etc/cni/net.d/tessera-token"
    );
    assert_eq!(node.read(&format!("{NET_DIR}/tessera-token")), "token-1");
    assert_eq!(node.mode(&format!("{NET_DIR}/tessera-token")), 0o600);
    assert_eq!(
        node.read(&format!("{NET_DIR}/tessera-ca.crt")),
        node.read("sa/ca.crt")
    );

    // The files of other plugins are as they were, and no temporary file is left.
    let after = node.host_files();
    for (name, file) in &before {
        assert_eq!(after.get(name), Some(file), "{name} changed");
    }
    let written: Vec<&str> = after
        .keys()
        .filter(|name| !before.contains_key(*name))
        .map(String::as_str)
        .collect();
    assert_eq!(
        written,
        [
            "host/etc/cni/net.d/10-tessera.conflist",
            "host/etc/cni/net.d/tessera-ca.crt",
            "host/etc/cni/net.d/tessera-kubeconfig",
            "host/etc/cni/net.d/tessera-token",
            "host/opt/cni/bin/tessera-ipam",
        ]
    );
}

#[test]
fn a_new_binary_replaces_the_old_one_by_rename_and_an_unchanged_one_is_left_alone() {
    let node = Node::new();
    let plugin = format!("{BIN_DIR}/tessera-ipam");
    assert_success(&node.install_once(|_| {}));
    let first = node.inode(&plugin);
    // The plugin may be running while the node agent restarts: an open copy keeps reading the
    // binary it started with.
    let running = fs::File::open(node.path(&plugin)).unwrap();

    assert_success(&node.install_once(|_| {}));
    assert_eq!(
        node.inode(&plugin),
        first,
        "an unchanged binary is not rewritten"
    );

    node.write("image/tessera-ipam", "plugin v2");
    assert_success(&node.install_once(|_| {}));
    assert_eq!(node.read(&plugin), "plugin v2");
    assert_eq!(node.mode(&plugin), 0o755);
    assert_ne!(
        node.inode(&plugin),
        first,
        "the new binary was renamed into place"
    );
    let mut old = String::new();
    std::io::Read::read_to_string(&mut &running, &mut old).unwrap();
    assert_eq!(old, "plugin v1");
}

#[test]
fn the_token_copy_follows_the_projected_token_as_it_rotates() {
    let node = Node::new();
    let token = format!("{NET_DIR}/tessera-token");
    let child = node.start_loop(|_| {});
    assert_eq!(node.read(&token), "token-1");
    let kubeconfig = node.read(&format!("{NET_DIR}/tessera-kubeconfig"));

    for rotated in ["token-2", "token-3"] {
        node.rotate_token(rotated);
        wait_for(rotated, Duration::from_secs(20), || {
            fs::read_to_string(node.path(&token)).is_ok_and(|t| t == rotated)
        });
        assert_eq!(node.mode(&token), 0o600);
    }
    assert_eq!(
        node.read(&format!("{NET_DIR}/tessera-kubeconfig")),
        kubeconfig,
        "the kubeconfig names the token file; it does not change with the token"
    );
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "SIGTERM ends the loop cleanly: {log}");
    assert!(log.contains("refreshed the service-account token"), "{log}");
    let leftovers: Vec<String> = node
        .host_files()
        .into_keys()
        .filter(|name| name.contains("/."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The ids and names of a process's children.
fn children(pid: libc::pid_t) -> Vec<(libc::pid_t, String)> {
    let list = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|child| {
            let child: libc::pid_t = child.parse().ok()?;
            let name = fs::read_to_string(format!("/proc/{child}/comm")).ok()?;
            Some((child, name.trim().to_string()))
        })
        .collect()
}

/// The full path of a command, as PATH finds it.
fn command_path(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

#[test]
fn sigterm_while_the_token_is_being_copied_ends_the_loop_cleanly() {
    let node = Node::new();
    // A `cmp` that takes a second once the marker exists, so the loop is caught copying.
    let marker = node.path("slow");
    node.write(
        "bin/cmp",
        &format!(
            "#!/bin/sh\n[ ! -e {marker:?} ] || sleep 1\nexec {:?} \"$@\"\n",
            command_path("cmp")
        ),
    );
    fs::set_permissions(node.path("bin/cmp"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        node.path("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = node.start_loop(|command| {
        command.env("PATH", path);
    });
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // Then wait for the loop to compare the token with its copy.
    node.write("slow", "");
    wait_for(
        "the loop copying the token",
        Duration::from_secs(20),
        || {
            children(pid)
                .iter()
                .any(|(child, _)| children(*child).iter().any(|(_, name)| name == "cmp"))
        },
    );
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "SIGTERM ends the loop cleanly: {log}");
}

#[test]
fn a_step_that_fails_stops_the_installer_before_the_conflist() {
    let node = Node::new();
    // A directory where the binary should be: it cannot be copied.
    fs::create_dir(node.path("image/not-a-binary")).unwrap();
    let mut child = node
        .installer()
        .env("TESSERA_IPAM_BINARY", node.path("image/not-a-binary"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let (_, log) = stop(child);
            panic!("the installer went on after a failed step: {log}");
        }
        sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot copy"), "{log}");
    let written: Vec<String> = node
        .host_files()
        .into_keys()
        .filter(|name| name.contains("conflist") && !name.contains("05-other"))
        .collect();
    assert!(written.is_empty(), "{written:?}");
}

#[test]
fn etcd_tls_files_are_copied_to_the_node_and_named_in_the_conflist() {
    let node = Node::new();
    node.write("etcd-tls/ca.crt", "etcd ca");
    node.write("etcd-tls/tls.crt", "client cert");
    node.write("etcd-tls/tls.key", "client key");
    let output = node.install_once(|command| {
        command
            .env("TESSERA_DATASTORE", "etcds://192.0.2.11:2379")
            .env("TESSERA_ETCD_CA", node.path("etcd-tls/ca.crt"))
            .env("TESSERA_ETCD_CERT", node.path("etcd-tls/tls.crt"))
            .env("TESSERA_ETCD_KEY", node.path("etcd-tls/tls.key"))
            .env("TESSERA_ETCD_PREFIX", "/tessera/prod/");
    });
    assert_success(&output);

    let conflist = node.conflist();
    let ipam = ipam(&conflist);
    assert_eq!(ipam["datastore"], "etcds://192.0.2.11:2379");
    assert_eq!(ipam["etcd_prefix"], "/tessera/prod/");
    for (field, file, content) in [
        ("etcd_ca", "ca.crt", "etcd ca"),
        ("etcd_cert", "client.crt", "client cert"),
        ("etcd_key", "client.key", "client key"),
    ] {
        assert_eq!(
            ipam[field],
            format!("/etc/cni/net.d/tessera-etcd-tls/{file}")
        );
        let copy = format!("{NET_DIR}/tessera-etcd-tls/{file}");
        assert_eq!(node.read(&copy), content);
        assert_eq!(node.mode(&copy), 0o600);
    }
    assert_eq!(node.mode(&format!("{NET_DIR}/tessera-etcd-tls")), 0o700);
}

#[test]
fn etcd_tls_copies_follow_their_secret() {
    let node = Node::new();
    node.write("etcd-tls/tls.crt", "client cert 1");
    let copy = format!("{NET_DIR}/tessera-etcd-tls/client.crt");
    let child = node.start_loop(|command| {
        command
            .env("TESSERA_DATASTORE", "etcds://192.0.2.11:2379")
            .env("TESSERA_ETCD_CERT", node.path("etcd-tls/tls.crt"));
    });
    assert_eq!(node.read(&copy), "client cert 1");
    node.write("etcd-tls/tls.crt", "client cert 2");
    wait_for("the renewed certificate", Duration::from_secs(20), || {
        fs::read_to_string(node.path(&copy)).is_ok_and(|c| c == "client cert 2")
    });
    assert_eq!(node.mode(&copy), 0o600);
    let (code, log) = stop(child);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("refreshed the etcd TLS files"), "{log}");
}

#[test]
fn an_ipv6_api_server_address_is_written_in_brackets() {
    let node = Node::new();
    assert_success(&node.install_once(|command| {
        command.env("KUBERNETES_SERVICE_HOST", "fd00:10:96::1");
    }));
    let kubeconfig: Value =
        serde_saphyr::from_str(&node.read(&format!("{NET_DIR}/tessera-kubeconfig"))).unwrap();
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["server"],
        "https://[fd00:10:96::1]:443"
    );
}

#[test]
fn bad_settings_are_refused_by_name_before_anything_is_written() {
    let cases: [(&str, &str, &str); 5] = [
        ("NODE_NAME", "", "NODE_NAME is not set"),
        ("TESSERA_DATASTORE", "", "TESSERA_DATASTORE is not set"),
        (
            "NODE_NAME",
            "node\",\"x",
            "NODE_NAME (node\",\"x) holds a quote",
        ),
        (
            "TOKEN_REFRESH_SECONDS",
            "0",
            "TOKEN_REFRESH_SECONDS (0) must be",
        ),
        (
            "SERVICE_ACCOUNT_DIR",
            "/nonexistent",
            "cannot read /nonexistent/token",
        ),
    ];
    for (name, value, message) in cases {
        let node = Node::new();
        let before = node.host_files();
        let output = node.install_once(|command| {
            command.env(name, value);
        });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}={value:?}: {stderr}");
        assert!(stderr.contains(message), "{name}={value:?}: {stderr}");
        assert_eq!(node.host_files(), before, "{name}={value:?} wrote files");
    }
}

/// A self-signed CA certificate, as the cluster's would be.
fn cluster_ca(dir: &Path) -> String {
    let output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=kubernetes"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::read_to_string(dir.join("ca.pem")).unwrap()
}

#[test]
fn the_real_plugin_runs_with_the_written_conflist_and_kubeconfig() {
    let env = common::Env::new();
    env.pool("pods", "10.244.0.0/16", 26, json!({}));
    let node = Node::new();
    node.write("sa/ca.crt", &cluster_ca(node.dir.path()));
    // An API server address where nothing listens, so a lookup fails at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let net_dir = node.path(NET_DIR);
    assert_success(&node.install_once(|command| {
        command
            .env("TESSERA_DATASTORE", env.db())
            .env("CNI_NET_DIR_ON_HOST", &net_dir)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", port.to_string());
    }));
    // What the runtime hands the first plugin of the list.
    let conflist = node.conflist();
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();

    // Without a pod to look up, ADD allocates for the node the conflist names.
    let added = env.cni("ADD", &conf, Some(&common::Att::new("c1")));
    let addresses = added.addresses();
    assert!(addresses[0].starts_with("10.244."), "{addresses:?}");
    assert!(addresses[0].ends_with("/26"), "block prefix: {addresses:?}");
    let ip: std::net::IpAddr = addresses[0].split('/').next().unwrap().parse().unwrap();
    let info = env.ipam().lookup(ip).unwrap().expect("allocated");
    assert_eq!(info.block.affinity.as_deref(), Some("rack1-node2"));

    // A pod's ADD reads the kubeconfig (CA, token file) and goes to its server.
    let pod = common::Att::new("c2").pod("default", "web");
    let refused = env.cni("ADD", &conf, Some(&pod));
    let message = refused.full_error();
    refused.err(11);
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert_eq!(env.handle_count(), 2, "the gateway and c1, nothing for c2");
}
