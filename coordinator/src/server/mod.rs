//! The coordinator daemon: opens the store, serves gRPC over mutual TLS, keeps
//! the registry saved, and shuts down cleanly.

mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k3sfleet_proto::v1::admin_service_server::AdminServiceServer;
use k3sfleet_proto::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::Server;

use crate::api::{AdminApi, AgentApi};
use crate::auth::{AuthLayer, RevokedSerials};
use crate::config::CoordinatorConfig;
use crate::fleet::{Fleet, FleetError};
use crate::store::{Store, StoreError};

pub use tls::ReloadingCertificate;

/// How often the server certificate files are checked for replacement.
const CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// HTTP/2 pings find agents whose network vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams still open this long after shutdown began are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Tls(#[from] k3sfleet_pki::TlsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    pub local_addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub store: Store,
    pub revoked: Arc<RevokedSerials>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops serving: closes agent sessions (they reconnect to the next
    /// coordinator), waits briefly for in-flight calls, saves the registry.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }

    /// Resolves when the server stops by itself (it should not).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Starts the coordinator on `config.listen`.
pub async fn start(config: CoordinatorConfig) -> Result<Running, StartError> {
    let store = Store::open(&config.data_dir)?;
    let fleet = Fleet::load(store.clone()).await?;
    let revoked = Arc::new(RevokedSerials::default());

    let certificate = ReloadingCertificate::load(config.tls.cert.clone(), config.tls.key.clone())?;
    let verifier = k3sfleet_pki::client_verifier(&config.tls.ca)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(k3sfleet_pki::server_config(
        verifier,
        certificate.clone(),
    )));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(k3sfleet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let router = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(AuthLayer::new(revoked.clone()))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(AgentServiceServer::new(AgentApi::new(
            fleet.clone(),
            config.artifacts.dir.clone(),
        )))
        .add_service(AdminServiceServer::new(AdminApi::new(
            fleet.clone(),
            store.clone(),
        )));

    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let (stop_serving, serving_stopped) = oneshot::channel::<()>();
    let incoming = tls::incoming(listener, acceptor);
    let server = tokio::spawn(async move {
        let result = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = serving_stopped.await;
            })
            .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "the gRPC server failed");
        }
    });

    let background = vec![
        certificate.watch(CERT_RELOAD_INTERVAL),
        spawn_report_flusher(fleet.clone(), config.report_flush_interval),
    ];
    let task = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let _ = shutdown_signal.await;
            fleet.close_all_sessions(Status::unavailable("the coordinator is shutting down"));
            let _ = stop_serving.send(());
            if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
                tracing::warn!("calls still open after the shutdown grace period were cut");
            }
            for task in background {
                task.abort();
            }
            match fleet.flush_reports().await {
                Ok(count) => tracing::debug!(count, "saved the last reports"),
                Err(err) => tracing::error!(error = %err, "saving the last reports failed"),
            }
        })
    };
    tracing::info!(%local_addr, "coordinator listening");
    Ok(Running {
        local_addr,
        fleet,
        store,
        revoked,
        shutdown,
        task,
    })
}

fn spawn_report_flusher(fleet: Arc<Fleet>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(err) = fleet.flush_reports().await {
                tracing::error!(error = %err, "saving health reports failed; will retry");
            }
        }
    })
}
