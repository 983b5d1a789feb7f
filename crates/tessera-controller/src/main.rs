//! `tessera-controller`: wires the settings, the datastore, the Kubernetes client, the HTTP
//! endpoints and the leader loop together. The work is in the library.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use tessera_controller::datastore::Datastore;
use tessera_controller::http::{self, Endpoints, Health};
use tessera_controller::lease::LeaseLock;
use tessera_controller::metrics::Metrics;
use tessera_controller::run::{self, Context};
use tessera_controller::settings::{self, Settings};

fn main() -> Result<()> {
    let settings = Settings::parse();
    init_tracing();
    // The etcd backend runs its own runtime: open, use and drop it outside async code.
    let datastore = open_datastore(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(settings, datastore.clone()));
    // Blocking datastore calls in flight finish or are abandoned; the process is ending.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn open_datastore(settings: &Settings) -> Result<Datastore> {
    let url = &settings.datastore;
    let store = tessera_store::open_with(url, &settings.etcd.options())
        .with_context(|| format!("cannot open the datastore {url:?} (--datastore)"))?;
    let datastore = Datastore::new(Arc::from(store));
    datastore.ping().with_context(|| {
        format!(
            "the datastore {url:?} does not answer; check --datastore and the --etcd-* \
             settings, and that etcd is running and reachable from this pod"
        )
    })?;
    Ok(datastore)
}

async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).with_context(|| {
                format!(
                    "cannot read the kubeconfig {} (--kubeconfig or KUBECONFIG); give a \
                     readable kubeconfig file, or neither to use the pod's service account",
                    path.display()
                )
            })?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| {
                    format!(
                        "the kubeconfig {} does not describe a usable cluster and user; fix \
                         its current-context",
                        path.display()
                    )
                })?
        }
        None => kube::Config::infer().await.context(
            "found no Kubernetes credentials: not running in a pod with a service account, \
             and no ~/.kube/config; pass --kubeconfig FILE",
        )?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client from the kubeconfig")
}

async fn serve(settings: Settings, datastore: Datastore) -> Result<()> {
    let client = kube_client(settings.kubeconfig.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for /metrics, /healthz and /readyz; pick a free \
                 address with --listen",
                settings.listen
            )
        })?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let endpoints = Endpoints {
        metrics: metrics.clone(),
        health: health.clone(),
    };
    tokio::spawn(http::serve(listener, endpoints));
    tracing::info!(listen = %settings.listen, "serving /metrics, /healthz and /readyz");

    let identity = settings.lease.identity_or(settings::hostname);
    let lease = &settings.lease;
    let lock = LeaseLock::new(
        client.clone(),
        &lease.lease_namespace,
        &lease.lease_name,
        &identity,
        lease.lease_duration,
    );
    let ctx = Context::new(client, datastore, metrics, health, settings.gc.clone());
    let stopped = tokio::select! {
        error = run::lead(&ctx, &lock) => Some(error),
        () = shutdown_signal() => None,
    };
    ctx.metrics.set_leader(false);
    if let Some(error) = stopped {
        return Err(error).context("the controller stopped acting");
    }
    tracing::info!("shutting down: giving up the lease");
    if let Err(error) = lock.release().await {
        tracing::warn!(%error, "could not give up the lease; another replica takes over when it expires");
    }
    Ok(())
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops cleanly");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
