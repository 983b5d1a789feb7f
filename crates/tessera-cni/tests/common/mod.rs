//! Helpers shared by the process tests: each test gets its own SQLite store in a temporary
//! directory and runs the real `tessera-ipam` binary against it, as a container runtime
//! would.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_core::catalog::Catalog;
use tessera_core::decode::decode_documents;
use tessera_core::ipam::{CheckReport, Ipam};
use tessera_store::SqliteStore;

/// The plugin binary under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_tessera-ipam");

/// Longest a single plugin run may take before the test gives up on it.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What one run of the plugin produced.
#[derive(Debug)]
pub struct Run {
    /// Standard output, parsed as JSON when it is JSON (`Value::Null` when empty).
    pub json: Value,
    /// Standard output as text.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
}

impl Run {
    fn from_output(o: Output) -> Self {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let json = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
        };
        Self {
            json,
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            status: o.status.code().unwrap_or(-1),
        }
    }

    /// Asserts success and returns the result JSON.
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.status, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        &self.json
    }

    /// Asserts a CNI error with this code and returns its message.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.status, 0, "plugin succeeded: {}", self.stdout);
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "wrong error code: {} (stderr {})",
            self.stdout,
            self.stderr
        );
        assert!(self.json["cniVersion"].is_string(), "{}", self.stdout);
        self.json["msg"].as_str().expect("msg").to_string()
    }

    /// `msg` and `details` of an error, joined as libcni prints them.
    pub fn full_error(&self) -> String {
        format!(
            "{}; {}",
            self.json["msg"].as_str().unwrap_or_default(),
            self.json["details"].as_str().unwrap_or_default()
        )
    }

    /// The addresses of an ADD result, as text with prefix.
    pub fn addresses(&self) -> Vec<String> {
        self.ok()["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|ip| ip["address"].as_str().expect("address").to_string())
            .collect()
    }
}

/// Waits for a child at most `limit`, killing it past that.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("poll child") {
            Some(_) => return child.wait_with_output().expect("collect child output"),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect killed child");
                panic!(
                    "process did not finish within {limit:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One attachment: container id and interface, plus optional CNI_ARGS.
#[derive(Clone, Debug)]
pub struct Att {
    /// `CNI_CONTAINERID`.
    pub cid: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_NETNS`.
    pub netns: String,
}

impl Att {
    /// Container `cid` on `eth0`.
    pub fn new(cid: &str) -> Self {
        Self {
            cid: cid.into(),
            ifname: "eth0".into(),
            args: String::new(),
            netns: format!("/var/run/netns/{cid}"),
        }
    }

    /// The same container on another interface.
    pub fn ifname(mut self, ifname: &str) -> Self {
        self.ifname = ifname.into();
        self
    }

    /// A Kubernetes pod: `K8S_POD_NAMESPACE` and `K8S_POD_NAME` in CNI_ARGS.
    pub fn pod(mut self, namespace: &str, name: &str) -> Self {
        self.args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID={}",
            self.cid
        );
        self
    }
}

/// A private datastore and the means to run the plugin against it.
pub struct Env {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A fresh, empty store.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = dir.path().join("tessera.db");
        Self { dir, db }
    }

    /// Path of the store file.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The allocator over this store, for setting up and inspecting state.
    pub fn ipam(&self) -> Ipam<SqliteStore> {
        Ipam::new(SqliteStore::open(&self.db).expect("open store"))
    }

    /// Applies resources (a JSON manifest, or a list of them) through the catalog.
    pub fn apply(&self, manifest: Value) {
        let store = SqliteStore::open(&self.db).expect("open store");
        let docs = match manifest {
            Value::Array(items) => items,
            one => vec![one],
        };
        for doc in docs {
            let resources = decode_documents(doc).expect("valid manifest");
            Catalog::new(&store).apply(&resources).expect("apply");
        }
    }

    /// A Calico IPPool.
    pub fn pool(&self, name: &str, cidr: &str, block_size: u8, extra: Value) {
        let mut spec = json!({"cidr": cidr, "blockSize": block_size});
        if let Value::Object(m) = extra {
            spec.as_object_mut().unwrap().extend(m);
        }
        self.apply(
            json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": name}, "spec": spec}),
        );
    }

    /// A SpiderIPPool with this spec (`ipVersion` is filled in from `subnet`).
    pub fn spider_pool(&self, name: &str, spec: Value) {
        let mut spec = spec;
        if spec.get("ipVersion").is_none() {
            let v6 = spec["subnet"].as_str().is_some_and(|s| s.contains(':'));
            spec["ipVersion"] = json!(if v6 { 6 } else { 4 });
        }
        self.apply(json!({"apiVersion": "spiderpool.spidernet.io/v2beta1",
                          "kind": "SpiderIPPool", "metadata": {"name": name}, "spec": spec}));
    }

    /// Sets annotations on a namespace (created when absent), as `tessera annotate` does.
    pub fn annotate_namespace(&self, name: &str, annotations: &[(&str, &str)]) {
        let store = SqliteStore::open(&self.db).expect("open store");
        let sets: Vec<(String, String)> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Catalog::new(&store)
            .annotate(
                tessera_core::resources::Kind::Namespace,
                name,
                &sets,
                &[],
                true,
            )
            .expect("annotate namespace");
    }

    /// Applies a multi-document YAML file through the catalog, as `tessera apply -f` does.
    pub fn apply_yaml_file(&self, path: &Path) {
        let text = std::fs::read_to_string(path).expect("read manifest");
        let mut chunk = String::new();
        let mut docs = Vec::new();
        for line in text.lines().chain(std::iter::once("---")) {
            if line.trim_end() == "---" {
                if chunk
                    .lines()
                    .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                {
                    let doc: Value = serde_saphyr::from_str(&chunk)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    docs.push(doc);
                }
                chunk.clear();
            } else {
                chunk.push_str(line);
                chunk.push('\n');
            }
        }
        self.apply(Value::Array(docs));
    }

    /// An IPReservation of the given addresses or CIDRs.
    pub fn reserve(&self, name: &str, cidrs: &[&str]) {
        self.apply(
            json!({"apiVersion": "projectcalico.org/v3", "kind": "IPReservation",
                          "metadata": {"name": name}, "spec": {"reservedCIDRs": cidrs}}),
        );
    }

    /// A network configuration for `version` with this store and node `node-a`; `ipam`
    /// entries are merged into the ipam section.
    pub fn conf(&self, version: &str, ipam: Value) -> Value {
        let mut section = json!({
            "type": "tessera-ipam",
            "datastore": self.db.to_str().unwrap(),
            "nodename": "node-a",
        });
        if let Value::Object(m) = ipam {
            section.as_object_mut().unwrap().extend(m);
        }
        json!({"cniVersion": version, "name": "tnet", "type": "macvlan", "master": "eth0",
               "ipam": section})
    }

    /// The plugin command for `verb` on `att`, without a datastore from the environment.
    pub fn command(&self, verb: &str, att: Option<&Att>) -> Command {
        let mut cmd = Command::new(PLUGIN);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(a) = att {
            cmd.env("CNI_CONTAINERID", &a.cid)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_ARGS", &a.args);
        }
        cmd
    }

    /// Starts `verb` for `att` with `conf` on stdin, without waiting for it.
    pub fn spawn(&self, verb: &str, conf: &Value, att: &Att) -> Child {
        let mut child = self
            .command(verb, Some(att))
            .spawn()
            .expect("start tessera-ipam");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write stdin");
        child
    }

    /// Runs `cmd` with `stdin`, bounded in time.
    pub fn run_cmd(&self, mut cmd: Command, stdin: &[u8]) -> Run {
        let mut child = cmd.spawn().expect("start tessera-ipam");
        {
            let mut pipe = child.stdin.take().expect("stdin");
            // The plugin may exit before reading (VERSION, early env errors).
            let _ = pipe.write_all(stdin);
        }
        Run::from_output(wait_bounded(child, RUN_LIMIT))
    }

    /// Runs `verb` for `att` with `conf` on stdin.
    pub fn cni(&self, verb: &str, conf: &Value, att: Option<&Att>) -> Run {
        self.run_cmd(self.command(verb, att), conf.to_string().as_bytes())
    }

    /// ADD that must succeed; returns the result.
    pub fn add(&self, conf: &Value, att: &Att) -> Value {
        self.cni("ADD", conf, Some(att)).ok().clone()
    }

    /// The consistency check, which must find no problem.
    pub fn assert_consistent(&self) -> CheckReport {
        let report = self.ipam().check().expect("check runs");
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        report
    }

    /// Number of handles in the store.
    pub fn handle_count(&self) -> usize {
        self.ipam().handles_with_prefix("").expect("list").len()
    }
}

/// Plain address of a result entry (`10.0.0.5/24` → `10.0.0.5`).
pub fn addr(cidr: &str) -> String {
    cidr.split('/').next().unwrap().to_string()
}

/// Whether tests that must not skip silently are running (CI sets `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The CNI guide's (docs/CNI.md) section under `heading` (a `## ` line), up to the next
/// section.
pub fn cni_guide_section(heading: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CNI.md");
    let text = std::fs::read_to_string(&path).expect("docs/CNI.md");
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("docs/CNI.md has no {heading:?}"));
    let rest = &text[start + heading.len() + 2..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

/// The lines of `text` strictly between the first line containing `after` and the next line
/// equal to `end`.
pub fn lines_between(text: &str, after: &str, end: &str) -> String {
    let mut lines = text.lines().skip_while(|l| !l.contains(after)).skip(1);
    let inner: Vec<&str> = lines.by_ref().take_while(|l| l.trim_end() != end).collect();
    assert!(!inner.is_empty(), "nothing after {after:?} up to {end:?}");
    inner.join("\n") + "\n"
}

/// The CNI guide's bridge network: its pool manifest, applied, and the `ipam` section of its
/// conflist's `bridge` plugin, with this store and `nodename` `node-a` (the guide leaves
/// both to the host). Returns the whole `bridge` plugin configuration.
pub fn guide_bridge_network(env: &Env) -> Value {
    let manifest = lines_between(&cni_guide_section("## Installing"), "<<'EOF'", "EOF");
    let file = env.dir().join("guide-pool.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    env.apply_yaml_file(&file);
    let conflist: Value = serde_json::from_str(&lines_between(
        &cni_guide_section("## A bridge network"),
        "```json",
        "```",
    ))
    .expect("the guide's conflist is JSON");
    let mut bridge = conflist["plugins"][0].clone();
    bridge["cniVersion"] = conflist["cniVersion"].clone();
    bridge["name"] = conflist["name"].clone();
    bridge["ipam"]["datastore"] = json!(env.db().to_str().unwrap());
    bridge["ipam"]["nodename"] = json!("node-a");
    bridge
}
