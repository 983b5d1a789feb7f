//! A canned Kubernetes API server on 127.0.0.1 for tests and benchmarks: it answers GETs of
//! the paths it was given with their status and JSON body, 404 to the rest, and records
//! every request. Plain HTTP, or HTTPS with a rustls server configuration.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Requests one connection may carry before the server closes it.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// Header lines a request may have.
const MAX_HEADERS: usize = 100;

/// How long a silent server keeps a connection open without answering.
const SILENT_HOLD: Duration = Duration::from_secs(30);

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The request path.
    pub path: String,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
}

type Routes = BTreeMap<String, (u16, String)>;

/// The server; it stops accepting when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    https: bool,
    routes: Arc<Mutex<Routes>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

/// How connections are served.
#[derive(Clone)]
enum Mode {
    Plain,
    Tls(Arc<rustls::ServerConfig>),
    /// Accept, then never answer.
    Silent,
}

impl FakeApiServer {
    /// A plain HTTP server.
    pub fn start() -> Self {
        Self::spawn(Mode::Plain)
    }

    /// An HTTPS server with `config` (its certificate and key).
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::spawn(Mode::Tls(config))
    }

    /// A server that accepts connections and never answers, for timeouts.
    pub fn silent() -> Self {
        Self::spawn(Mode::Silent)
    }

    fn spawn(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let server = Self {
            addr: listener.local_addr().expect("listener address"),
            https: matches!(mode, Mode::Tls(_)),
            routes: Arc::default(),
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let (routes, requests, stop) = (
            server.routes.clone(),
            server.requests.clone(),
            server.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (mode, routes, requests) = (mode.clone(), routes.clone(), requests.clone());
                std::thread::spawn(move || serve_connection(stream, mode, &routes, &requests));
            }
        });
        server
    }

    /// The server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Answers GET `path` with `status` and `body` from now on.
    pub fn set(&self, path: &str, status: u16, body: impl Into<String>) {
        self.routes
            .lock()
            .expect("routes lock")
            .insert(path.to_string(), (status, body.into()));
    }

    /// Serves `pod` (a Pod object as JSON) at its path.
    pub fn set_pod(&self, pod: &serde_json::Value) {
        let meta = &pod["metadata"];
        let (ns, name) = (meta["namespace"].as_str(), meta["name"].as_str());
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            ns.unwrap_or_default(),
            name.unwrap_or_default()
        );
        self.set(&path, 200, pod.to_string());
    }

    /// Serves `namespace` (a Namespace object as JSON) at its path.
    pub fn set_namespace(&self, namespace: &serde_json::Value) {
        let name = namespace["metadata"]["name"].as_str().unwrap_or_default();
        self.set(
            &format!("/api/v1/namespaces/{name}"),
            200,
            namespace.to_string(),
        );
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Writes `dir/kubeconfig` for `server` with a user whose token is in `dir/token` (holding
/// `token`); returns the kubeconfig's path.
pub fn write_kubeconfig(dir: &Path, server: &str, token: &str) -> PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    let text = format!(
        "current-context: c\ncontexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
         clusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n\
         users: [{{name: u, user: {{tokenFile: token}}}}]\n"
    );
    std::fs::write(&kubeconfig, text).expect("write the kubeconfig");
    std::fs::write(dir.join("token"), token).expect("write the token file");
    kubeconfig
}

/// A Pod object as the API server returns it.
pub fn pod_json(
    namespace: &str,
    name: &str,
    uid: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "labels": pairs(labels),
            "annotations": pairs(annotations),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("{name}-rs"), "uid": "rs-uid",
                                 "controller": true}]
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Pending"}
    })
}

/// A Namespace object as the API server returns it.
pub fn namespace_json(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("{name}-uid"), "labels": pairs(labels),
                     "annotations": pairs(annotations)},
        "status": {"phase": "Active"}
    })
}

fn pairs(items: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect()
}

fn serve_connection(
    stream: TcpStream,
    mode: Mode,
    routes: &Mutex<Routes>,
    requests: &Mutex<Vec<Recorded>>,
) {
    let _ = stream.set_nodelay(true);
    match mode {
        Mode::Plain => serve_requests(stream, routes, requests),
        Mode::Tls(config) => {
            let Ok(conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            serve_requests(rustls::StreamOwned::new(conn, stream), routes, requests);
        }
        Mode::Silent => {
            std::thread::sleep(SILENT_HOLD);
            drop(stream);
        }
    }
}

fn serve_requests<S: Read + Write>(
    stream: S,
    routes: &Mutex<Routes>,
    requests: &Mutex<Vec<Recorded>>,
) {
    let mut reader = BufReader::new(stream);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        requests
            .lock()
            .expect("requests lock")
            .push(request.clone());
        let answer = routes
            .lock()
            .expect("routes lock")
            .get(&request.path)
            .cloned();
        let (status, body) = answer.unwrap_or_else(|| {
            let body = serde_json::json!({"kind": "Status", "status": "Failure",
                "message": format!("{} not found", request.path), "reason": "NotFound",
                "code": 404});
            (404, body.to_string())
        });
        // One write: a head and a body written apart would wait on the client's delayed
        // ACK (Nagle), adding tens of milliseconds to every answer.
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let out = reader.get_mut();
        if out.write_all(answer.as_bytes()).is_err() || out.flush().is_err() {
            return;
        }
    }
}

/// Reads one request head (GETs carry no body); `None` at the end of the connection.
fn read_request<R: BufRead>(reader: &mut R) -> Option<Recorded> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut authorization = None;
    for _ in 0..MAX_HEADERS {
        line.clear();
        reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
        let header = line.trim_end();
        if header.is_empty() {
            return Some(Recorded {
                path,
                authorization,
            });
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    None
}
