//! The HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (the watches have synced and the datastore answers).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};

/// What `/readyz` reports on; written by the lease and the loops, read by the server.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    leader: bool,
    holder: Option<String>,
    synced: bool,
    datastore: Option<Result<(), String>>,
}

impl Health {
    fn state(&self) -> MutexGuard<'_, HealthState> {
        // A panic elsewhere while holding the lock leaves plain flags behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This replica holds the lease and starts its loops (not yet synced).
    pub fn set_leader(&self) {
        let mut state = self.state();
        state.leader = true;
        state.synced = false;
    }

    /// This replica waits; `holder` holds the lease, if anyone.
    pub fn set_standby(&self, holder: Option<String>) {
        let mut state = self.state();
        state.leader = false;
        state.holder = holder;
        state.synced = false;
    }

    /// The node, namespace and pod caches have (or no longer have) their first full list.
    pub fn set_synced(&self, synced: bool) {
        self.state().synced = synced;
    }

    /// Result of the latest datastore ping.
    pub fn set_datastore(&self, result: Result<(), String>) {
        self.state().datastore = Some(result);
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let state = self.state();
        if !state.leader {
            return Err(match &state.holder {
                Some(holder) => format!("standby: the lease is held by {holder}"),
                None => "standby: waiting for the lease".to_string(),
            });
        }
        if !state.synced {
            return Err("the watches of nodes, namespaces and pods have not synced yet".into());
        }
        match &state.datastore {
            None => Err("the datastore has not been pinged yet".into()),
            Some(Err(error)) => Err(format!("the datastore did not answer: {error}")),
            Some(Ok(())) => Ok(()),
        }
    }
}

/// What the server reads.
#[derive(Clone)]
pub struct Endpoints {
    /// Encoded on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Reported on `/readyz`.
    pub health: Arc<Health>,
}

/// Serves the endpoints on `listener` until the task is dropped. A failed accept or
/// connection is logged and does not stop the server.
pub async fn serve(listener: TcpListener, endpoints: Endpoints) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: wait for some to be closed.
                tracing::warn!(%error, "accepting an HTTP connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = endpoints.respond(request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        });
    }
}

impl Endpoints {
    /// The response to `method path`.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
        if !known {
            return text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz or /readyz\n",
            );
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(metrics::CONTENT_TYPE),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            _ => match self.health.readiness() {
                Ok(()) => text(StatusCode::OK, "ok\n"),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn endpoints() -> Endpoints {
        Endpoints {
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
        }
    }

    async fn get(endpoints: &Endpoints, path: &str) -> (StatusCode, String) {
        let response = endpoints.respond(&Method::GET, path);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_only_as_a_synced_leader_with_a_datastore() {
        let e = endpoints();
        e.health.set_standby(Some("replica-b".into()));
        let (status, body) = get(&e, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("replica-b"), "{body}");

        e.health.set_leader();
        let (status, body) = get(&e, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("synced"), "{body}");

        e.health.set_synced(true);
        e.health
            .set_datastore(Err("etcd at 127.0.0.1:2379 refused".into()));
        let (status, body) = get(&e, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("refused"), "{body}");

        e.health.set_datastore(Ok(()));
        assert_eq!(get(&e, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn healthz_metrics_and_unknown_paths() {
        let e = endpoints();
        assert_eq!(get(&e, "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(&e, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("tessera_controller_leader 0"), "{body}");
        assert_eq!(get(&e, "/").await.0, StatusCode::NOT_FOUND);
        let post = e.respond(&Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, endpoints()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        server.abort();
    }
}
