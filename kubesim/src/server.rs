//! Starting and stopping a simulated cluster: the HTTP server and the controller loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::faults::Faults;
use crate::api::{Shared, router};
use crate::cluster::{Cluster, Stats};
use crate::scenario::{Scenario, build_cluster};
use crate::time::Now;

/// How long shutdown waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum StartError {
    #[error("invalid listen address {addr:?} (expected host:port, e.g. 127.0.0.1:0)")]
    ListenAddress {
        addr: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Error)]
pub enum KubeconfigError {
    #[error("cannot write kubeconfig {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Entry point: `KubeSim::start(scenario, "127.0.0.1:0").await?`.
#[derive(Debug)]
pub struct KubeSim;

impl KubeSim {
    /// Builds the scenario's cluster and serves it on `listen` (port 0 picks a free port).
    pub async fn start(scenario: &Scenario, listen: &str) -> Result<Running, StartError> {
        let addr: SocketAddr = listen.parse().map_err(|source| StartError::ListenAddress {
            addr: listen.to_owned(),
            source,
        })?;
        // Tokio's bind, for its deeper accept backlog than std's.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Self::serve(scenario, listener, addr))
    }

    /// As [`KubeSim::start`], on a listener the caller made (one opened
    /// inside a network namespace, say). Needs a Tokio runtime.
    pub fn serve_on(
        scenario: &Scenario,
        listener: std::net::TcpListener,
    ) -> Result<Running, StartError> {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let bind_error = |source| StartError::Bind { addr, source };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
        Ok(Self::serve(scenario, listener, addr))
    }

    fn serve(scenario: &Scenario, listener: tokio::net::TcpListener, addr: SocketAddr) -> Running {
        let cluster = build_cluster(scenario, &Now::capture());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let bookmark_interval = Duration::from_secs_f64(scenario.cluster.bookmark_interval);
        let shared = Arc::new(Shared::new(
            cluster,
            shutdown_rx.clone(),
            addr.to_string(),
            bookmark_interval,
        ));

        let controllers = tokio::spawn(controller_loop(shared.clone(), shutdown_rx.clone()));
        let app = router(shared.clone());
        let mut server_shutdown = shutdown_rx;
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = server_shutdown.wait_for(|stop| *stop).await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "simulated API server stopped");
            }
        });
        tracing::info!(%addr, "simulated Kubernetes API server listening");
        Running {
            addr,
            shared,
            shutdown_tx,
            server,
            controllers,
        }
    }
}

/// Runs the controllers whenever something changed or a delay ran out.
async fn controller_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = shared.lock().reconcile(&Now::capture());
        let sleep = match next {
            Some(at) => tokio::time::sleep_until(at),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = shared.wake.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// A simulated cluster being served.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    server: JoinHandle<()>,
    controllers: JoinHandle<()>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at this server, no credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {url}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    user: kubesim\ncurrent-context: kubesim\nusers:\n- name: kubesim\n  user: {{}}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`Running::kubeconfig`] to `path` atomically (temp file + rename).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), KubeconfigError> {
        let fail = |source| KubeconfigError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp-kubesim");
        std::fs::write(&tmp, self.kubeconfig()).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats().clone()
    }

    pub fn inject_faults(&self, faults: &Faults) {
        self.shared.faults.set(faults);
    }

    pub fn clear_faults(&self) {
        self.shared.faults.set(&Faults::default());
    }

    /// Reads the cluster's current state (e.g. `|c| c.pods.len()`); keep the closure short,
    /// it holds the lock every request needs.
    pub fn inspect<R>(&self, read: impl FnOnce(&Cluster) -> R) -> R {
        read(&self.shared.lock())
    }

    /// Stops serving: open watches end, connections get a short grace period.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.controllers.await;
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}
