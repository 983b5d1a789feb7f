//! A throw-away etcd on 127.0.0.1 for tests and benchmarks: one member or a small cluster,
//! on free ports, with its data in a temporary directory.
//!
//! The members are child processes of the caller; dropping the [`LocalEtcd`] kills exactly
//! those processes (by their PIDs) and removes the directory. Fault tests freeze, stop and
//! restart single members with [`LocalEtcd::pause`], [`LocalEtcd::stop`] and
//! [`LocalEtcd::restart`].
//!
//! The etcd binary is `$TESSERA_ETCD_BIN` if set, else `etcd` on the `PATH` (Debian's
//! `etcd-server` package installs `/usr/bin/etcd`). Data goes under `$TMPDIR`.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{EtcdStore, OpenOptions, Store};

/// Environment variable naming the etcd binary to run.
pub const ETCD_BIN_ENV: &str = "TESSERA_ETCD_BIN";

/// How long a member may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// PEM files for serving etcd over TLS with client certificates.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that signed both certificates below.
    pub ca: PathBuf,
    /// Server certificate (must name 127.0.0.1) and key.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// Client certificate the members require, and its key.
    pub client_cert: PathBuf,
    /// Key of `client_cert`.
    pub client_key: PathBuf,
}

/// etcd members started by this process on loopback ports.
pub struct LocalEtcd {
    binary: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
    extra_args: Vec<String>,
    tls: Option<TlsFiles>,
}

impl std::fmt::Debug for LocalEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEtcd")
            .field("url", &self.url())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// True when tests run under CI (`CI=true`), where a missing etcd is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The etcd binary: `$TESSERA_ETCD_BIN`, else `etcd` found on the `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os(ETCD_BIN_ENV).filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    find_on_path("etcd")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl LocalEtcd {
    /// Starts one member and waits until it answers.
    pub fn start() -> Result<Self, String> {
        Self::start_cluster(1)
    }

    /// Starts a cluster of `size` members and waits until every member answers.
    pub fn start_cluster(size: usize) -> Result<Self, String> {
        Self::start_with_args(size, &[])
    }

    /// Like [`LocalEtcd::start_cluster`], passing `extra_args` to every member.
    pub fn start_with_args(size: usize, extra_args: &[&str]) -> Result<Self, String> {
        Self::start_full(size, extra_args, None)
    }

    /// Starts one member serving clients over TLS only, requiring client certificates
    /// signed by `tls.ca`.
    pub fn start_tls(tls: TlsFiles) -> Result<Self, String> {
        Self::start_full(1, &[], Some(tls))
    }

    fn start_full(size: usize, extra_args: &[&str], tls: Option<TlsFiles>) -> Result<Self, String> {
        let binary = binary().ok_or_else(|| {
            format!(
                "no etcd binary: install Debian's etcd-server package, or set {ETCD_BIN_ENV} \
                 to an etcd v3 server binary"
            )
        })?;
        let mut last_error = String::new();
        // A port picked as free may be taken by someone else before etcd binds it; a fresh
        // set of ports usually fixes that.
        for _ in 0..3 {
            match Self::try_start(&binary, size, extra_args, tls.clone()) {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Starts one member, or returns `None` after printing why when no etcd binary is
    /// installed. Under `CI=true` a missing etcd panics instead: CI must not skip these tests.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        Self::cluster_or_skip(1, test)
    }

    /// [`LocalEtcd::start_or_skip`] for a cluster of `size` members.
    pub fn cluster_or_skip(size: usize, test: &str) -> Option<Self> {
        Self::or_skip(test, || Self::start_cluster(size))
    }

    /// [`LocalEtcd::start_or_skip`] for one member started with `extra_args` (a small
    /// `--quota-backend-bytes` or `--max-request-bytes`, say).
    pub fn with_args_or_skip(extra_args: &[&str], test: &str) -> Option<Self> {
        Self::or_skip(test, || Self::start_with_args(1, extra_args))
    }

    fn or_skip(test: &str, start: impl FnOnce() -> Result<Self, String>) -> Option<Self> {
        if binary().is_none() && !required() {
            eprintln!(
                "skipping {test}: no etcd binary (install etcd-server or set {ETCD_BIN_ENV}); \
                 under CI=true this is a failure"
            );
            return None;
        }
        match start() {
            Ok(etcd) => Some(etcd),
            Err(e) => panic!("{test}: cannot start etcd: {e}"),
        }
    }

    fn try_start(
        binary: &Path,
        size: usize,
        extra_args: &[&str],
        tls: Option<TlsFiles>,
    ) -> Result<Self, String> {
        let dir = unique_dir()?;
        let ports = free_ports(2 * size)?;
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.join(format!("m{i}.etcd")),
                log: dir.join(format!("m{i}.log")),
                child: None,
                paused: false,
            })
            .collect();
        let mut etcd = Self {
            binary: binary.to_path_buf(),
            dir,
            members,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        for i in 0..size {
            etcd.spawn(i, "new")?;
        }
        etcd.wait_ready(START_TIMEOUT)?;
        Ok(etcd)
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("cannot create {}: {e}", m.log.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", m.log.display()))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // If the process that started etcd dies without dropping the LocalEtcd (a
                // SIGKILL, or a panic with panic=abort), the kernel kills etcd too, so no
                // member outlives its test. The signal follows the thread that spawned it,
                // which is why members are started, restarted and dropped on one thread.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "tessera-test"])
            // Loopback answers in microseconds: shorter raft timers make leader elections
            // after a stopped member take a fraction of a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        self.members[i].paused = false;
        Ok(())
    }

    /// Waits until every running member answers a linearizable read.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() || self.members[i].paused {
                continue;
            }
            let store = self.member_store(i, Duration::from_millis(500))?;
            loop {
                if let Some(child) = self.members[i].child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.members[i].child = None;
                        return Err(format!(
                            "etcd member {} exited with {status} while starting; its log \
                             ends with:\n{}",
                            self.members[i].name,
                            tail(&self.members[i].log)
                        ));
                    }
                }
                match store.read(&[]) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!(
                            "etcd member {} did not answer within {timeout:?}: {e}; its log \
                             ends with:\n{}",
                            self.members[i].name,
                            tail(&self.members[i].log)
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    fn member_store(&self, i: usize, timeout: Duration) -> Result<EtcdStore, String> {
        let options = OpenOptions {
            etcd_timeout_ms: Some(timeout.as_millis() as u64),
            ..self.options()
        };
        EtcdStore::open(&self.member_url(i), &options).map_err(|e| e.to_string())
    }

    /// The options a client needs: the TLS files of a TLS member, else none.
    pub fn options(&self) -> OpenOptions {
        match &self.tls {
            Some(tls) => OpenOptions {
                etcd_ca: Some(tls.ca.clone()),
                etcd_cert: Some(tls.client_cert.clone()),
                etcd_key: Some(tls.client_key.clone()),
                ..Default::default()
            },
            None => OpenOptions::default(),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "etcds"
        } else {
            "etcd"
        }
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,...` (`etcds://` with TLS): every member.
    pub fn url(&self) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("{}://{}", self.scheme(), eps.join(","))
    }

    /// The URL of member `i` alone.
    pub fn member_url(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    /// `http://127.0.0.1:P` (or `https://`) client URLs of every member, for
    /// `etcdctl --endpoints`.
    pub fn client_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Writes 4 KiB records (`fill/0`, `fill/1`, ...) until the cluster refuses one, and
    /// returns the refusal: with a small `--quota-backend-bytes`, the NOSPACE alarm. Panics
    /// after 1000 writes, so a cluster that never fills up fails the test instead of growing.
    pub fn fill_until_refused(&self) -> crate::StoreError {
        let store = self.store();
        let value = vec![b'x'; 4096];
        for i in 0..1000 {
            let put = crate::Op::Put(format!("fill/{i}"), value.clone());
            if let Err(e) = store.txn(&[], &[put]) {
                return e;
            }
        }
        panic!("1000 writes of 4 KiB never filled the cluster");
    }

    /// Opens a store on every member with [`LocalEtcd::options`].
    pub fn store(&self) -> EtcdStore {
        self.store_with(&self.options())
    }

    /// Opens a store on every member.
    pub fn store_with(&self, options: &OpenOptions) -> EtcdStore {
        EtcdStore::open(&self.url(), options).expect("a local etcd URL is valid")
    }

    /// The process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The temporary directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Freezes member `i` (SIGSTOP): it keeps its sockets open but answers nothing.
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGSTOP);
            self.members[i].paused = true;
            // The signal is delivered asynchronously: a thread already running could still
            // answer a request. Wait (boundedly) until every thread shows as stopped.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !all_threads_stopped(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Thaws member `i` (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGCONT);
            self.members[i].paused = false;
        }
    }

    /// Stops member `i` for good (SIGKILL), keeping its data for [`LocalEtcd::restart`].
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Starts a stopped member `i` again on its old ports and data, and waits until it
    /// answers.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.stop(i);
        self.spawn(i, "existing")?;
        self.wait_ready(START_TIMEOUT)
    }

    /// Runs `etcdctl ARGS` against member 0, as an operator would (adding users, enabling
    /// authentication).
    pub fn etcdctl(&self, args: &[&str]) -> Result<(), String> {
        let endpoint = format!("127.0.0.1:{}", self.members[0].client_port);
        let mut cmd = etcdctl()?;
        cmd.args(["--endpoints", &endpoint]).args(args);
        run_tool(cmd)
    }

    /// Saves a snapshot of the keyspace to `file` with `etcdctl snapshot save`, as an
    /// operator's backup does.
    pub fn save_snapshot(&self, file: &Path) -> Result<(), String> {
        let file = file
            .to_str()
            .ok_or_else(|| format!("{} is not a UTF-8 path", file.display()))?;
        self.etcdctl(&["snapshot", "save", file])
    }

    /// Restores a one-member cluster from `file` the way an operator does: stops the member,
    /// `etcdctl snapshot restore` into a new data directory, starts the member on it. The
    /// restored store goes back to the snapshot's revision, so revision numbers written
    /// after the snapshot are handed out again.
    pub fn restore_snapshot(&mut self, file: &Path) -> Result<(), String> {
        if self.members.len() != 1 || self.tls.is_some() {
            return Err("snapshot restore is supported for one plain member".into());
        }
        self.stop(0);
        let m = &self.members[0];
        let restored = self.dir.join(format!("{}.restored", m.name));
        let _ = std::fs::remove_dir_all(&restored);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = etcdctl()?;
        cmd.args(["snapshot", "restore"])
            .arg(file)
            .arg("--data-dir")
            .arg(&restored)
            .args(["--name", &m.name])
            .args(["--initial-cluster", &format!("{}={peer}", m.name)])
            .args(["--initial-cluster-token", "tessera-test"])
            .args(["--initial-advertise-peer-urls", &peer]);
        run_tool(cmd)?;
        std::fs::remove_dir_all(&m.data_dir)
            .map_err(|e| format!("cannot remove {}: {e}", m.data_dir.display()))?;
        std::fs::rename(&restored, &m.data_dir)
            .map_err(|e| format!("cannot move the restored data into place: {e}"))?;
        self.spawn(0, "existing")?;
        self.wait_ready(START_TIMEOUT)
    }

    /// The last lines of member `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.members[i].log)
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the PID is our own child, which we
    // have not waited for, so it cannot have been reused by another process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Environment variable naming the etcdctl binary (snapshots).
pub const ETCDCTL_BIN_ENV: &str = "TESSERA_ETCDCTL_BIN";

/// `etcdctl` (`$TESSERA_ETCDCTL_BIN`, else on the `PATH`; Debian's `etcd-client`), speaking
/// the v3 API.
fn etcdctl() -> Result<Command, String> {
    let bin = std::env::var_os(ETCDCTL_BIN_ENV)
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .or_else(|| find_on_path("etcdctl"))
        .ok_or_else(|| {
            format!(
                "no etcdctl binary: install Debian's etcd-client package, or set \
                 {ETCDCTL_BIN_ENV} to an etcdctl binary"
            )
        })?;
    let mut cmd = Command::new(bin);
    cmd.env("ETCDCTL_API", "3");
    Ok(cmd)
}

fn run_tool(mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn unique_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tessera-etcd-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    // All listeners stay open until every port is known, so the n ports are distinct.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(|state| state == "T")
            })
            .unwrap_or(false)
    })
}
