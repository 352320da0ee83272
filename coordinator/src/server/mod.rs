//! The coordinator daemon: opens the store, serves gRPC over mutual TLS, keeps
//! the registry saved, and shuts down cleanly.

mod limits;
mod readiness;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k3sfleet_proto::v1::access_service_server::AccessServiceServer;
use k3sfleet_proto::v1::admin_service_server::AdminServiceServer;
use k3sfleet_proto::v1::agent_service_server::AgentServiceServer;
use k3sfleet_proto::v1::certificate_service_server::CertificateServiceServer;
use k3sfleet_proto::v1::drain_service_server::DrainServiceServer;
use k3sfleet_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use k3sfleet_proto::v1::rollout_service_server::RolloutServiceServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::server::NamedService;
use tonic::transport::Server;

use crate::access::{Access, CertPolicy, Revocations};
use crate::api::{AccessApi, RolloutApi};
use crate::api::{AdminApi, AgentApi, DrainApi};
use crate::auth::AuthLayer;
use crate::config::CoordinatorConfig;
use crate::fleet::{Fleet, FleetError};
use crate::rate_limit::AnonymousLimiter;
use crate::rollout::fleet_link::FleetLink;
use crate::rollout::{EngineSettings, HttpAlerts, Parts, RolloutEngine};
use crate::store::{Store, StoreError};

pub use k3sfleet_pki::ReloadingCertificate;
pub use readiness::Readiness;

/// Streams still open this long after shutdown began are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The rollout engine turns every second (EngineSettings::tick) but may wait
/// this long on a slow API server while it looks at the cluster.
const ROLLOUT_ENGINE_MAX_SILENCE: Duration = Duration::from_secs(120);

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
    #[error(transparent)]
    Ca(#[from] k3sfleet_pki::IssueError),
    #[error(transparent)]
    Kubernetes(#[from] crate::kube::KubeClientError),
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Metrics(#[from] k3sfleet_daemon::metrics_http::ListenError),
    #[error("cannot write {path}")]
    MetricsAddress {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    pub local_addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub store: Store,
    pub revocations: Arc<Revocations>,
    pub readiness: Arc<Readiness>,
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
    let (data_dir_lock, store) = Store::open_exclusive(&config.data_dir)?;
    let fleet = Fleet::load(store.clone()).await?;
    let ca = match &config.tls.ca_key {
        Some(key) => Some(k3sfleet_pki::FleetCa::load(&config.tls.ca, key)?),
        None => None,
    };
    let policy = CertPolicy {
        agent: config.enrollment.agent_cert_ttl,
        admin: config.enrollment.admin_cert_ttl,
        reader: config.enrollment.reader_cert_ttl,
    };
    let access = Arc::new(Access::load(store.clone(), ca, policy).await?);
    let revocations = access.revocations();

    let certificate = ReloadingCertificate::load(config.tls.cert.clone(), config.tls.key.clone())?;
    let verifier = k3sfleet_pki::client_verifier(&config.tls.ca)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(k3sfleet_pki::server_config(
        verifier,
        certificate.clone(),
    )));
    let listener = tls::listen(config.listen).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    // Not serving until the first readiness probe says otherwise; every
    // service is known from the start (a probe never gets NOT_FOUND).
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in std::iter::once("").chain(SERVICES.iter().copied()) {
        health
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let readiness = Readiness::new();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(k3sfleet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let drain_engine = drain_engine(&config).await?;
    let claims = Arc::new(crate::drain::Claims::default());
    let drain_api = DrainApi::new(
        drain_engine.clone(),
        config
            .kubernetes
            .as_ref()
            .map_or(crate::drain::DEFAULT_TIMEOUT, |k| k.drain_timeout),
        store.clone(),
        claims.clone(),
    );
    let access_api = || AccessApi::new(access.clone(), fleet.clone(), store.clone());
    let settings = EngineSettings::default();
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let rollouts = RolloutEngine::new(Parts {
        store: Arc::new(store.clone()),
        link: Arc::new(FleetLink::new(
            fleet.clone(),
            clock.clone(),
            settings.agent_wait,
        )),
        cluster: drain_engine
            .map(|engine| Arc::new(engine) as Arc<dyn crate::rollout::cluster::Cluster>),
        claims,
        clock,
        alerts: Arc::new(HttpAlerts),
        artifacts_dir: config.artifacts.dir.clone(),
        settings,
    });
    // No HTTP/2 pings from this side: agents ping (they must notice a
    // coordinator that vanished), a session's reports tell the coordinator
    // its agent is there (fleet::silence_limit), and the kernel's keepalive
    // closes connections whose peer vanished (tls::incoming).
    let router = Server::builder()
        .layer(AuthLayer::new(
            revocations.clone(),
            AnonymousLimiter::new(&config.limits),
        ))
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
        )))
        .add_service(EnrollmentServiceServer::new(access_api()))
        .add_service(CertificateServiceServer::new(access_api()))
        .add_service(AccessServiceServer::new(access_api()))
        .add_service(DrainServiceServer::new(drain_api))
        .add_service(RolloutServiceServer::new(RolloutApi::new(rollouts.clone())));

    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let (stop_serving, serving_stopped) = oneshot::channel::<()>();
    let incoming = tls::incoming(
        listener,
        acceptor,
        &config.limits,
        readiness.register("accept loop", 6 * tls::ACCEPT_LOOP_BEAT),
    );
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

    let stop_rollouts = tokio_util::sync::CancellationToken::new();
    let metrics = match &config.metrics {
        Some(metrics) => Some(
            serve_metrics(
                metrics,
                &config.data_dir,
                fleet.clone(),
                rollouts.clone(),
                readiness.clone(),
                stop_rollouts.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let flush_every = config.report_flush_interval;
    let background = vec![
        tokio::spawn({
            let stop = stop_rollouts.clone();
            let heartbeat = readiness.register("rollout engine", ROLLOUT_ENGINE_MAX_SILENCE);
            async move {
                if let Err(err) = rollouts.run(stop, heartbeat).await {
                    tracing::error!(error = %err, "the rollout engine could not load its state");
                }
            }
        }),
        certificate.watch(k3sfleet_pki::CERT_RELOAD_INTERVAL),
        spawn_report_flusher(
            fleet.clone(),
            flush_every,
            readiness.register(
                "report flusher",
                (10 * flush_every).max(Duration::from_secs(60)),
            ),
        ),
        spawn_expiry_sweeper(fleet.clone()),
        readiness.supervise(store.clone(), health, SERVICES.to_vec()),
    ]
    .into_iter()
    .chain(metrics)
    .collect::<Vec<_>>();
    let task = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            // Held until the coordinator has stopped: no second one may start on this data meanwhile.
            let _data_dir_lock = data_dir_lock;
            let _ = shutdown_signal.await;
            fleet.close_all_sessions(Status::unavailable("the coordinator is shutting down"));
            let _ = stop_serving.send(());
            if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
                tracing::warn!("calls still open after the shutdown grace period were cut");
            }
            stop_rollouts.cancel();
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
        revocations,
        readiness,
        shutdown,
        task,
    })
}

/// The services gRPC health reports on (besides the server as a whole, "").
const SERVICES: &[&str] = &[
    <AgentServiceServer<AgentApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
    <EnrollmentServiceServer<AccessApi> as NamedService>::NAME,
    <CertificateServiceServer<AccessApi> as NamedService>::NAME,
    <AccessServiceServer<AccessApi> as NamedService>::NAME,
    <DrainServiceServer<DrainApi> as NamedService>::NAME,
    <RolloutServiceServer<RolloutApi> as NamedService>::NAME,
];

/// Serves `/metrics`, and writes the bound address beside the database (so a
/// configured port 0 can be found).
async fn serve_metrics(
    config: &crate::config::MetricsConfig,
    data_dir: &std::path::Path,
    fleet: Arc<Fleet>,
    rollouts: Arc<RolloutEngine>,
    readiness: Arc<Readiness>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<JoinHandle<()>, StartError> {
    use k3sfleet_daemon::metrics_http;
    let listener = metrics_http::bind(config.listen).await?;
    let address = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let path = data_dir.join("metrics-address");
    let tmp = data_dir.join("metrics-address.tmp");
    std::fs::write(&tmp, format!("{address}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| StartError::MetricsAddress { path, source })?;
    let tls = match &config.tls {
        Some(tls) => Some(Arc::new(k3sfleet_pki::metrics_tls(
            &tls.cert,
            &tls.key,
            tls.client_ca.as_deref(),
        )?)),
        None => None,
    };
    tracing::info!(%address, https = tls.is_some(), "serving metrics");
    let render: metrics_http::Render = Arc::new(move || {
        let (fleet, rollouts) = (fleet.clone(), rollouts.clone());
        Box::pin(
            async move { crate::metrics::render(&fleet, &rollouts, crate::clock::unix_ms()).await },
        )
    });
    let ready: metrics_http::Ready = Arc::new(move || {
        let problems = readiness.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    });
    let endpoint = metrics_http::Endpoint {
        render,
        ready: Some(ready),
        banner: "k3sfleet-coordinator: metrics at /metrics\n",
        tls,
    };
    Ok(tokio::spawn(metrics_http::serve(listener, endpoint, stop)))
}

/// The drain engine, when the config gives Kubernetes access; rollouts and
/// DrainService share it.
async fn drain_engine(
    config: &CoordinatorConfig,
) -> Result<Option<crate::drain::DrainEngine>, StartError> {
    let Some(kubernetes) = &config.kubernetes else {
        tracing::info!("no [kubernetes] section: draining and rollouts are off");
        return Ok(None);
    };
    let client = crate::kube::client(&kubernetes.kubeconfig, kubernetes.context.as_deref()).await?;
    Ok(Some(crate::drain::DrainEngine::new(client)))
}

/// Ends sessions whose certificate expired while they were open (the
/// handshake checked it only when they began).
fn spawn_expiry_sweeper(fleet: Arc<Fleet>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            for node in fleet.close_expired_sessions(crate::clock::unix_ms()) {
                tracing::warn!(node, "closed a session whose certificate expired");
            }
        }
    })
}

fn spawn_report_flusher(
    fleet: Arc<Fleet>,
    every: Duration,
    heartbeat: Arc<crate::heartbeat::Heartbeat>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.beat();
            ticker.tick().await;
            if let Err(err) = fleet.flush_reports().await {
                tracing::error!(error = %err, "saving health reports failed; will retry");
            }
        }
    })
}
