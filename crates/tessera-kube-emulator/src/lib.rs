//! Starts a Kubernetes API emulator on 127.0.0.1 for end-to-end tests.
//!
//! The emulator is `emulator/serve.py`, built on `kmock` from PyPI (pinned in
//! `emulator/requirements.txt`). It serves nodes, namespaces, pods, events and
//! `coordination.k8s.io` leases with list, watch, get, create, patch, replace and delete, and
//! the API server's habits the controller relies on (resourceVersion, 409 Conflict, graceful pod
//! deletion). [`KubeEmulator::start`] runs it as a child process; dropping the handle kills
//! exactly that process (by its PID) and removes its temporary directory.
//!
//! The Python interpreter is `$TESSERA_KUBE_EMULATOR_PYTHON` if set, else the virtual
//! environment `scripts/kube-emulator-env.sh` creates in `target/kube-emulator-venv`.
//!
//! The blocking helpers ([`KubeEmulator::create`], [`KubeEmulator::patch`], ...) speak plain
//! HTTP/1.0 over a `TcpStream`: they only ever talk to this emulator on loopback, so no HTTP
//! client crate (and its TLS stack) is pulled into every test that starts one.

#![deny(missing_docs)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Environment variable naming the Python interpreter that has `kmock` installed.
pub const PYTHON_ENV: &str = "TESSERA_KUBE_EMULATOR_PYTHON";

/// How long the emulator may take to listen after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one helper request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/emulator/serve.py");
const DEFAULT_PYTHON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../target/kube-emulator-venv/bin/python"
);

/// True when tests run under CI (`CI=true`), where a missing emulator is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The Python interpreter: `$TESSERA_KUBE_EMULATOR_PYTHON`, else the project's virtual
/// environment.
pub fn python() -> PathBuf {
    std::env::var_os(PYTHON_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PYTHON))
}

/// Why the emulator cannot run here (no interpreter, or no `kmock` in it), or `None` if it can.
pub fn unavailable() -> Option<String> {
    let python = python();
    let fix = format!(
        "run scripts/kube-emulator-env.sh (it creates target/kube-emulator-venv with kmock), or \
         set {PYTHON_ENV} to a Python 3.11+ that has kmock==0.8"
    );
    match Command::new(&python)
        .args(["-c", "import kmock"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{} cannot import kmock ({}); {fix}",
            python.display(),
            // A traceback's last line says what went wrong.
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}; {fix}", python.display())),
    }
}

/// Options of an emulator: a bearer token to require, an HTTPS port.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Serve HTTPS too (on a second port) with this PEM certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// An answer of the emulator to a helper request.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body parsed as JSON (`Value::Null` when empty or not JSON).
    pub json: Value,
    /// Body as text (a watch answers with one JSON event per line).
    pub body: String,
}

/// A Kubernetes API emulator running as a child process of the test.
pub struct KubeEmulator {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    token: Option<String>,
}

impl std::fmt::Debug for KubeEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEmulator")
            .field("url", &self.url())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl KubeEmulator {
    /// Starts a plain-HTTP emulator without authentication and waits until it listens.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&Options::default())
    }

    /// Starts an emulator with `options` and waits until it listens.
    pub fn start_with(options: &Options) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("tessera-kube-emulator-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let mut emulator = Self {
            dir,
            child: None,
            port: 0,
            tls_port: None,
            token: options.token.clone(),
        };
        emulator.spawn(options)?;
        let deadline = Instant::now() + START_TIMEOUT;
        emulator.port = emulator.wait_for_port("port", deadline)?;
        if options.tls.is_some() {
            emulator.tls_port = Some(emulator.wait_for_port("tls-port", deadline)?);
        }
        Ok(emulator)
    }

    /// Starts a plain emulator, or returns `None` after printing why when Python or kmock is
    /// missing. Under `CI=true` a missing emulator panics instead: CI must not skip these tests.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        Self::with_or_skip(&Options::default(), test)
    }

    /// [`KubeEmulator::start_or_skip`] with `options`.
    pub fn with_or_skip(options: &Options, test: &str) -> Option<Self> {
        if let Some(why) = unavailable() {
            if required() {
                panic!("{test}: the Kubernetes API emulator cannot run: {why}");
            }
            eprintln!("skipping {test}: {why}; under CI=true this is a failure");
            return None;
        }
        match Self::start_with(options) {
            Ok(emulator) => Some(emulator),
            Err(e) => panic!("{test}: cannot start the Kubernetes API emulator: {e}"),
        }
    }

    fn spawn(&mut self, options: &Options) -> Result<(), String> {
        let log_path = self.log_path();
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(python());
        cmd.arg(SERVER_SCRIPT)
            .arg("--port-file")
            .arg(self.dir.path().join("port"));
        if let Some(token) = &options.token {
            cmd.args(["--token", token]);
        }
        if let Some((cert, key)) = &options.tls {
            cmd.arg("--tls-port-file")
                .arg(self.dir.path().join("tls-port"))
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // A test process killed without dropping the emulator takes it along.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_for_port(&mut self, file: &str, deadline: Instant) -> Result<u16, String> {
        let path = self.dir.path().join(file);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(port) = text.trim().parse() {
                    return Ok(port);
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "the emulator exited with {status} while starting; its log ends \
                         with:\n{}",
                        self.log_tail()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the emulator did not listen within {START_TIMEOUT:?}; its log ends with:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT` when started with TLS.
    pub fn https_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// The plain HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the emulator, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory holding the emulator's log and port files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for the plain HTTP URL (with the bearer token, if one is required).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, kubeconfig(&self.url(), self.token.as_deref(), None))
    }

    /// Writes a kubeconfig for the HTTPS URL trusting `ca` (a PEM file). Panics when the
    /// emulator was started without TLS.
    pub fn write_https_kubeconfig(&self, path: &Path, ca: &Path) -> std::io::Result<()> {
        let url = self
            .https_url()
            .expect("the emulator was started without TLS");
        std::fs::write(path, kubeconfig(&url, self.token.as_deref(), Some(ca)))
    }

    /// Stops the emulator (SIGKILL) and waits for it; later requests fail to connect.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of the emulator's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("emulator.log")
    }

    /// Sends one request; `path` starts with `/` (e.g. `/api/v1/nodes`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Response, String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        let raw = exchange(self.port, head + &body)
            .map_err(|e| format!("{method} {path} on {}: {e}", self.url()))?;
        parse_response(&raw).map_err(|e| format!("{method} {path}: {e}"))
    }

    /// POSTs `object` to the collection `path`; panics unless the emulator answers 201.
    pub fn create(&self, path: &str, object: &Value) -> Value {
        self.expect("POST", path, "application/json", Some(object), &[200, 201])
    }

    /// Merge-patches (RFC 7386) the object at `path`; panics unless the emulator answers 200.
    pub fn patch(&self, path: &str, patch: &Value) -> Value {
        let content_type = "application/merge-patch+json";
        self.expect("PATCH", path, content_type, Some(patch), &[200])
    }

    /// Deletes the object at `path` the way `kubectl delete` does without flags (a pod whose
    /// spec has `terminationGracePeriodSeconds` terminates gracefully); panics unless the
    /// emulator answers 200.
    pub fn delete(&self, path: &str) -> Value {
        self.expect("DELETE", path, "application/json", None, &[200, 202])
    }

    /// Deletes the object at `path` with `gracePeriodSeconds` (0 removes it at once).
    pub fn delete_with_grace(&self, path: &str, seconds: u64) -> Value {
        let options = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "gracePeriodSeconds": seconds});
        self.expect(
            "DELETE",
            path,
            "application/json",
            Some(&options),
            &[200, 202],
        )
    }

    /// GETs the object at `path`: `None` on 404; panics on any other failure.
    pub fn get(&self, path: &str) -> Option<Value> {
        let response = self
            .request("GET", path, "application/json", None)
            .unwrap_or_else(|e| panic!("{e}"));
        match response.status {
            200 => Some(response.json),
            404 => None,
            status => panic!("GET {path}: HTTP {status}: {}", response.json),
        }
    }

    fn expect(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
        ok: &[u16],
    ) -> Value {
        let response = self
            .request(method, path, content_type, body)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            ok.contains(&response.status),
            "{method} {path}: HTTP {}: {}",
            response.status,
            response.json
        );
        response.json
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        // The process goes first; the directory follows when `dir` is dropped.
        self.stop();
    }
}

/// A kubeconfig with one cluster, user and context, as kubectl writes it.
fn kubeconfig(server: &str, token: Option<&str>, ca: Option<&Path>) -> String {
    let ca_line = ca
        .map(|ca| format!("    certificate-authority: {}\n", ca.display()))
        .unwrap_or_default();
    let user = token
        .map(|t| format!("    token: {t}\n"))
        .unwrap_or_else(|| "    {}\n".into());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: \
         {server}\n{ca_line}users:\n- name: tester\n  user:\n{user}contexts:\n- name: emulator\n  \
         context:\n    cluster: emulator\n    user: tester\ncurrent-context: emulator\n"
    )
}

fn exchange(port: u16, request: String) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    // HTTP/1.0: the server closes the connection after the body, so reading to the end is
    // reading the whole answer.
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP status line in {head:?}"))?;
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok(Response {
        status,
        json,
        body: body.to_string(),
    })
}
