//! The cluster of the end-to-end tests: a real etcd, the Kubernetes API emulator, the real
//! `tessera-controller`, `tessera` and `tessera-ipam` binaries, each a child process of the
//! test and gone when it ends.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_kube_emulator::{KubeEmulator, Options};
use tessera_store::local_etcd::LocalEtcd;

/// The controller binary under test.
pub const CONTROLLER: &str = env!("CARGO_BIN_EXE_tessera-controller");

/// The CNI network name of the tests' configuration; handles are `k8s-pod-network:<cid>:eth0`.
pub const NETWORK: &str = "k8s-pod-network";

/// The `tessera` CLI and the `tessera-ipam` plugin, next to the controller binary. They
/// belong to other packages, which Cargo does not build for this one's tests: when one is
/// missing or older than the sources it is built from, the first call builds both. (A
/// workspace test run has built them already; rebuilding them with this package's features
/// would only relink them.)
pub fn sibling_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = Path::new(CONTROLLER)
        .parent()
        .expect("the controller binary sits in a directory");
    let built = BUILT.get_or_init(|| {
        if ["tessera", "tessera-ipam"]
            .iter()
            .all(|bin| up_to_date(&dir.join(bin)))
        {
            return Ok(());
        }
        let out = Command::new(env!("CARGO"))
            .args(["build", "-p", "tessera-cli", "-p", "tessera-cni", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("cannot build the tessera and tessera-ipam binaries:\n{e}");
    }
    dir.join(name)
}

/// Whether `binary` exists and is newer than every source file of the crates it is built
/// from (and Cargo.lock).
fn up_to_date(binary: &Path) -> bool {
    let Some(built) = modified(binary) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut newest = modified(&root.join("Cargo.lock"));
    for krate in [
        "tessera-core",
        "tessera-store",
        "tessera-etcd-proto",
        "tessera-k8s-lookup",
        "tessera-cli",
        "tessera-cni",
    ] {
        let dir = root.join("crates").join(krate);
        newest = newest.max(modified(&dir.join("Cargo.toml")));
        newest = newest.max(newest_in(&dir.join("src")));
    }
    newest.is_some_and(|newest| newest <= built)
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest_in(dir: &Path) -> Option<std::time::SystemTime> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                newest_in(&path)
            } else {
                modified(&path)
            }
        })
        .max()
}

/// A free port on 127.0.0.1 (free when asked; the controller binds it right after).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1");
    listener.local_addr().expect("local address").port()
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with `openssl` in `dir`:
/// `(ca.pem, server.pem, server-key.pem)`.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (install it): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tessera test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server-key.pem",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    )
}

/// What one run of a binary produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn run(mut cmd: Command, stdin: &str) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    // A binary may exit before reading its input.
    let _ = child
        .stdin
        .take()
        .expect("stdin pipe")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait for the child");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A pod as the tests make it: in the emulator, and attached with a CNI ADD.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The UID the emulator gave it.
    pub uid: String,
    /// Node it runs on.
    pub node: String,
    /// Container id of its sandbox (one per pod incarnation).
    pub container_id: String,
}

impl Pod {
    /// The emulator path of this pod.
    pub fn path(&self) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", self.namespace, self.name)
    }

    /// The id of the handle the plugin gives this pod's attachment.
    pub fn handle(&self) -> String {
        format!("{NETWORK}:{}:eth0", self.container_id)
    }
}

/// etcd, the API emulator and a directory for kubeconfigs and logs.
pub struct Cluster {
    /// The API emulator.
    pub kube: KubeEmulator,
    /// The datastore.
    pub etcd: LocalEtcd,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Starts etcd and the emulator, or `None` (after saying why) when one of them is not
    /// installed; under `CI=true` a missing one fails the test instead.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, &Options::default())
    }

    /// [`Cluster::start`] with an emulator started with `options` (token, TLS).
    pub fn start_with(test: &str, options: &Options) -> Option<Self> {
        let etcd = LocalEtcd::start_or_skip(test)?;
        let kube = KubeEmulator::with_or_skip(options, test)?;
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig)
            .expect("write kubeconfig");
        Some(Self {
            kube,
            etcd,
            dir,
            kubeconfig,
        })
    }

    /// The temporary directory of this cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kubeconfig pointing at the emulator.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `tessera --datastore <etcd> ARGS` with `stdin`.
    pub fn tessera_run(&self, args: &[&str], stdin: &str) -> Run {
        let mut cmd = Command::new(sibling_binary("tessera"));
        cmd.arg("--datastore")
            .arg(self.etcd.url())
            .args(args)
            .env_remove("TESSERA_DATASTORE");
        run(cmd, stdin)
    }

    /// Starts `tessera --datastore <etcd> ARGS` in the background, its output going to
    /// `log` (for a test that kills it half-way).
    pub fn tessera_spawn(&self, args: &[&str], log: &Path) -> Child {
        let file = std::fs::File::create(log).expect("create the command's log");
        Command::new(sibling_binary("tessera"))
            .arg("--datastore")
            .arg(self.etcd.url())
            .args(args)
            .env_remove("TESSERA_DATASTORE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start tessera")
    }

    /// Runs `tessera ARGS`, expecting success; returns standard output.
    pub fn tessera(&self, args: &[&str]) -> String {
        self.tessera_with_input(args, "")
    }

    /// Runs `tessera ARGS` with `stdin`, expecting success; returns standard output.
    pub fn tessera_with_input(&self, args: &[&str], stdin: &str) -> String {
        let run = self.tessera_run(args, stdin);
        assert_eq!(
            run.code, 0,
            "tessera {args:?} failed: {}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// `tessera apply -f -` of a YAML manifest.
    pub fn apply(&self, manifest: &str) {
        self.tessera_with_input(&["apply", "-f", "-"], manifest);
    }

    /// Whether the store holds `ip` for some handle (`tessera ipam show --ip`).
    pub fn in_use(&self, ip: &str) -> bool {
        let out = self.tessera(&["ipam", "show", "--ip", ip]);
        out.starts_with(&format!("IP {ip} is in use"))
    }

    /// The handle holding `ip`, if any.
    pub fn holder(&self, ip: &str) -> Option<String> {
        let out = self.tessera(&["ipam", "show", "--ip", ip]);
        out.lines()
            .find_map(|line| line.trim().strip_prefix("handle: "))
            .map(str::to_string)
    }

    /// Tessera's record of node `name`, if any (`tessera get nodes -o json`).
    pub fn node_record(&self, name: &str) -> Option<Value> {
        self.records("nodes", name)
    }

    /// Tessera's record of namespace `name`, if any.
    pub fn namespace_record(&self, name: &str) -> Option<Value> {
        self.records("namespaces", name)
    }

    fn records(&self, kind: &str, name: &str) -> Option<Value> {
        let list: Value = serde_json::from_str(&self.tessera(&["get", kind, "-o", "json"]))
            .expect("tessera get -o json prints JSON");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        items
            .into_iter()
            .find(|item| item["metadata"]["name"] == name)
    }

    /// `tessera ipam check` finds no problem.
    pub fn assert_check_clean(&self) {
        let run = self.tessera_run(&["ipam", "check"], "");
        assert_eq!(
            run.code, 0,
            "ipam check found problems:\n{}{}",
            run.stdout, run.stderr
        );
    }

    /// Creates a Kubernetes Node with `labels`.
    pub fn create_node(&self, name: &str, labels: Value) {
        self.kube.create(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": labels}}),
        );
    }

    /// Creates a Kubernetes Namespace with `labels` and `annotations`.
    pub fn create_namespace(&self, name: &str, labels: Value, annotations: Value) {
        self.kube.create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels, "annotations": annotations}}),
        );
    }

    /// Creates a running pod on `node` in the emulator (`metadata` is merged into its
    /// metadata: annotations, ownerReferences...). Nothing is allocated yet.
    pub fn create_pod(&self, namespace: &str, name: &str, node: &str, metadata: Value) -> Pod {
        let mut meta = json!({"name": name, "namespace": namespace});
        if let Value::Object(extra) = metadata {
            meta.as_object_mut().expect("an object").extend(extra);
        }
        let created = self.kube.create(
            &format!("/api/v1/namespaces/{namespace}/pods"),
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
                    "status": {"phase": "Running"}}),
        );
        let uid = created["metadata"]["uid"]
            .as_str()
            .expect("a uid")
            .to_string();
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            container_id: format!("c{}", &uid.replace('-', "")[..16]),
            uid,
            node: node.into(),
        }
    }

    /// The network configuration of `tessera-ipam` on `node` (etcd datastore); `ipam` entries
    /// are merged into the ipam section.
    pub fn cni_conf(&self, node: &str, ipam: Value) -> Value {
        let mut section = json!({
            "type": "tessera-ipam",
            "datastore": self.etcd.url(),
            "nodename": node,
        });
        if let Value::Object(extra) = ipam {
            section.as_object_mut().expect("an object").extend(extra);
        }
        json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "bridge", "ipam": section})
    }

    /// Runs `tessera-ipam` ADD for `pod` with `conf`, as the runtime on its node would.
    pub fn cni_add_run(&self, pod: &Pod, conf: &Value) -> Run {
        self.cni_run("ADD", pod, conf)
    }

    /// Runs `tessera-ipam` DEL for `pod` with `conf`.
    pub fn cni_del_run(&self, pod: &Pod, conf: &Value) -> Run {
        self.cni_run("DEL", pod, conf)
    }

    /// Runs `tessera-ipam` DEL for `pod` with `conf`, which must succeed, as the kubelet does
    /// when the pod's sandbox goes.
    pub fn detach_with(&self, pod: &Pod, conf: &Value) {
        let run = self.cni_run("DEL", pod, conf);
        assert_eq!(
            run.code, 0,
            "DEL of {} failed: {}{}",
            pod.name, run.stdout, run.stderr
        );
    }

    /// Runs `tessera-ipam` with CNI_COMMAND `command` for `pod` with `conf`.
    fn cni_run(&self, command: &str, pod: &Pod, conf: &Value) -> Run {
        let mut cmd = Command::new(sibling_binary("tessera-ipam"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", format!("/var/run/netns/{}", pod.container_id))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};\
                     K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.container_id, pod.uid
                ),
            );
        run(cmd, &conf.to_string())
    }

    /// ADD for `pod` on its node with the plain configuration; returns its IPv4 address.
    pub fn attach(&self, pod: &Pod) -> String {
        self.attach_with(pod, &self.cni_conf(&pod.node, json!({})))
    }

    /// ADD for `pod` with `conf`, which must succeed; returns its first address (no prefix).
    pub fn attach_with(&self, pod: &Pod, conf: &Value) -> String {
        let run = self.cni_add_run(pod, conf);
        assert_eq!(
            run.code, 0,
            "ADD of {} failed: {}{}",
            pod.name, run.stdout, run.stderr
        );
        let result: Value = serde_json::from_str(&run.stdout).expect("ADD prints JSON");
        let address = result["ips"][0]["address"].as_str().expect("an address");
        address
            .split('/')
            .next()
            .expect("address/prefix")
            .to_string()
    }

    /// Starts a controller with the test settings (`--gc-interval 1s`, `--leak-grace-period
    /// 3s`, `--lease-duration 3s`) and `extra` flags, which replace those of the same name.
    pub fn controller(&self, identity: &str, extra: &[&str]) -> Controller {
        let port = free_port();
        let log = self.dir().join(format!("controller-{identity}-{port}.log"));
        let file = std::fs::File::create(&log).expect("controller log");
        let mut cmd = Command::new(CONTROLLER);
        cmd.arg("--datastore")
            .arg(self.etcd.url())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--identity", identity])
            .args(["--lease-namespace", "tessera-system"])
            .args(
                TEST_SETTINGS
                    .iter()
                    .filter(|(flag, _)| !extra.contains(flag))
                    .flat_map(|(flag, value)| [flag, value]),
            )
            .args(extra)
            .env_remove("TESSERA_DATASTORE")
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = cmd.spawn().expect("start tessera-controller");
        Controller {
            child: Some(child),
            port,
            log,
        }
    }
}

/// The settings of the tests' controllers: passes every second, short grace and lease.
const TEST_SETTINGS: [(&str, &str); 3] = [
    ("--gc-interval", "1s"),
    ("--leak-grace-period", "3s"),
    ("--lease-duration", "3s"),
];

/// A running `tessera-controller`; dropping it kills the process.
pub struct Controller {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Controller {
    /// `GET path` on the controller's HTTP endpoint: status and body, or `None` while it
    /// does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::Read as _;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// Waits until `/readyz` answers 200 (watches synced, datastore answering).
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            self.assert_running();
            if let Some((200, _)) = self.http_get("/readyz") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the controller was not ready within 30 s; its log ends with:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        match self.http_get("/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics: {other:?}; log:\n{}", self.log_tail()),
        }
    }

    /// The value of the sample `name_and_labels` (e.g. `tessera_pool_size{pool="a"}`).
    pub fn metric(&self, name_and_labels: &str) -> Option<f64> {
        self.metrics().lines().find_map(|line| {
            let rest = line.strip_prefix(name_and_labels)?;
            rest.strip_prefix(' ')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "the controller exited with {status}; its log ends with:\n{}",
                self.log_tail()
            );
        }
    }

    /// Stops the controller (SIGKILL: no goodbye, as a crashed or evicted process).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}
