//! The simulated Longhorn on the real tier. Its CustomResourceDefinitions are served by the
//! real API servers, its settings, volumes and replicas are created there, and its controller
//! (kubesim's own rules, through [`Mirror`]) runs against them twice a second, as
//! longhorn-manager runs against a cluster. The instance-manager pods it creates name their
//! node, so that node's KWOK runs them as it runs any pod; the real disruption controller
//! keeps their budgets' status, and a drain meets those budgets through the real Eviction API.
//!
//! The pods are owned by an InstanceManager, a kind this API server does not serve: the
//! garbage collector leaves a dependent whose owner's kind it cannot resolve alone, and a
//! drain still treats the pod as managed (its controller reference is set).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k3sfleet_kubesim::Scenario;
use k3sfleet_kubesim::cluster::LonghornStats;
use k3sfleet_kubesim::longhorn::mirror::{Change, Observed, ResourceRef};
use k3sfleet_kubesim::longhorn::{
    LonghornNode, Mirror, NAMESPACE, Replica, Setting, Volume, custom_resource_definitions,
};
use k3sfleet_kubesim::time::Now;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

/// How often the controller looks at the cluster (Longhorn's controllers react to watch
/// events; a rebuild in the test scenarios takes seconds).
const INTERVAL: Duration = Duration::from_millis(500);

/// The running controller; stopped when dropped.
pub struct RealLonghorn {
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Shared {
    stats: LonghornStats,
    settled: bool,
    /// The last request that failed, for a timeout's message.
    last_error: Option<String>,
}

impl RealLonghorn {
    /// Installs the scenario's Longhorn and starts its controller (on the caller's runtime);
    /// `None` when the scenario has none.
    pub async fn start(
        client: kube::Client,
        scenario: Scenario,
    ) -> anyhow::Result<Option<RealLonghorn>> {
        let Some((mirror, initial)) = Mirror::install(&scenario, &Now::capture())? else {
            return Ok(None);
        };
        install_definitions(&client).await?;
        // Each API server starts serving a new definition on its own: a create that meets one
        // not serving it yet is tried again.
        let deadline = Instant::now() + Duration::from_secs(30);
        for change in &initial {
            while let Err(err) = send(&client, change).await {
                if Instant::now() >= deadline {
                    return Err(err.context("creating Longhorn's settings, volumes and replicas"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(run(client, mirror, shared.clone()));
        Ok(Some(RealLonghorn { shared, task }))
    }

    /// What the simulated Longhorn judged so far.
    pub fn stats(&self) -> LonghornStats {
        self.shared().stats.clone()
    }

    /// Waits (blocking) until every Longhorn node's instance manager runs with its budget.
    pub fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.shared().settled {
            if Instant::now() >= deadline {
                bail!(
                    "the simulated Longhorn's instance managers were not all running with their \
                     budgets within {timeout:?} (last error: {})",
                    self.shared().last_error.as_deref().unwrap_or("none")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RealLonghorn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RealLonghorn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealLonghorn")
            .field("shared", &*self.shared())
            .finish_non_exhaustive()
    }
}

async fn run(client: kube::Client, mut mirror: Mirror, shared: Arc<Mutex<Shared>>) {
    loop {
        // A failed read (a server restarting, etcd without quorum) is tried again next time;
        // the controller's memory (rebuilds under way) is kept meanwhile.
        let error = match observe(&client).await {
            Ok(observed) => {
                let mut error = None;
                for change in mirror.step(observed, &Now::capture()) {
                    if let Err(err) = send(&client, &change).await {
                        error = Some(format!("{err:#}"));
                    }
                }
                error
            }
            Err(err) => Some(format!("reading the cluster: {err:#}")),
        };
        {
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.stats = mirror.stats().longhorn();
            shared.settled = mirror.settled();
            if error.is_some() {
                shared.last_error = error;
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn observe(client: &kube::Client) -> Result<Observed, kube::Error> {
    let (nodes, pods, pdbs, volumes, replicas, longhorn_nodes, settings) = tokio::try_join!(
        list(Api::<Node>::all(client.clone())),
        list(Api::<Pod>::all(client.clone())),
        list(Api::<PodDisruptionBudget>::namespaced(
            client.clone(),
            NAMESPACE
        )),
        list(Api::<Volume>::namespaced(client.clone(), NAMESPACE)),
        list(Api::<Replica>::namespaced(client.clone(), NAMESPACE)),
        list(Api::<LonghornNode>::namespaced(client.clone(), NAMESPACE)),
        list(Api::<Setting>::namespaced(client.clone(), NAMESPACE)),
    )?;
    Ok(Observed {
        nodes,
        pods,
        pdbs,
        volumes,
        replicas,
        longhorn_nodes,
        settings,
    })
}

async fn list<K>(api: Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(&ListParams::default()).await?.items)
}

fn api(client: &kube::Client, resource: &ResourceRef, namespace: &str) -> Api<DynamicObject> {
    let api_resource = ApiResource {
        group: resource.group.into(),
        version: resource.version.into(),
        api_version: if resource.group.is_empty() {
            resource.version.into()
        } else {
            format!("{}/{}", resource.group, resource.version)
        },
        kind: resource.kind.into(),
        plural: resource.plural.into(),
    };
    Api::namespaced_with(client.clone(), namespace, &api_resource)
}

/// Makes one of the controller's writes on the real API server.
async fn send(client: &kube::Client, change: &Change) -> anyhow::Result<()> {
    match change {
        Change::Create {
            resource,
            object,
            status,
        } => {
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let api = api(client, resource, namespace);
            let body: DynamicObject = serde_json::from_value(object.clone())?;
            match api.create(&PostParams::default(), &body).await {
                Ok(_) => {}
                // Made by an earlier try whose status write failed.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("creating {} {namespace}/{name}", resource.kind));
                }
            }
            if let Some(status) = status {
                write_status(&api, resource, name, &json!({ "status": status })).await?;
            }
        }
        Change::Patch {
            resource,
            namespace,
            name,
            main,
            status,
        } => {
            let api = api(client, resource, namespace);
            if let Some(main) = main {
                api.patch(name, &PatchParams::default(), &Patch::Merge(main))
                    .await
                    .with_context(|| format!("patching {} {namespace}/{name}", resource.kind))?;
            }
            if let Some(status) = status {
                write_status(&api, resource, name, status).await?;
            }
        }
        Change::Delete {
            resource,
            namespace,
            name,
        } => {
            match api(client, resource, namespace)
                .delete(name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("deleting {} {namespace}/{name}", resource.kind));
                }
            }
        }
    }
    Ok(())
}

/// A merge patch through the status subresource.
async fn write_status(
    api: &Api<DynamicObject>,
    resource: &ResourceRef,
    name: &str,
    patch: &Value,
) -> anyhow::Result<()> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("writing the status of {} {name}", resource.kind))?;
    Ok(())
}

/// Creates Longhorn's CustomResourceDefinitions and waits until their resources are served.
async fn install_definitions(client: &kube::Client) -> anyhow::Result<()> {
    let definitions = Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        },
    );
    for definition in custom_resource_definitions() {
        let body: DynamicObject = serde_json::from_value(definition)?;
        definitions
            .create(&PostParams::default(), &body)
            .await
            .with_context(|| format!("creating {:?}", body.metadata.name))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served = tokio::try_join!(
            list(Api::<Volume>::namespaced(client.clone(), NAMESPACE)),
            list(Api::<Replica>::namespaced(client.clone(), NAMESPACE)),
            list(Api::<LonghornNode>::namespaced(client.clone(), NAMESPACE)),
            list(Api::<Setting>::namespaced(client.clone(), NAMESPACE)),
        );
        match served {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(err).context("Longhorn's resources were not served within 60 s");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
