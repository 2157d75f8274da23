//! `mira operator`: the stage engine as one kube-runtime controller per kind. Each reconcile
//! dereferences the upstream chain, observes the resource's Jobs and step results, runs the pure
//! engine, then applies its actions (plan ConfigMaps and Jobs created once, Events)
//! and the full status with the one field manager `mira-operator`.

mod backoff;
mod children;
mod leader;
mod metrics;
mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use scorer_runner::plan::{sha256_hex, PlanRef, StorageConfig};
use scorer_runner::steps::PLAN;
use scorer_runner::storage::join;
use serde::de::DeserializeOwned;

use crate::api::{DistillationJob, FilterRun, RubricSet, SourceGroup, StagePhase, StorageSpec};
use crate::error::Retry;
use crate::reconcile::{self, Action, Input, JobState, KindStatus, Lineage, Pipeline, Policy, Upstream, UpstreamRef};
use crate::report;
use crate::results::Results;
use crate::{Error, Result};
use backoff::Backoff;
use children::{LABEL_JOB_NAME, LABEL_MANAGED_BY, LABEL_RESOURCE, MANAGER};
use leader::Leadership;
use serve::Health;

/// Reconcile this often when no stage runs (an upstream may have changed while a watch was down).
const REQUEUE_IDLE: Duration = Duration::from_secs(600);

/// The name of a stage Job's one container, which runs `scorer-runner`.
pub const RUNNER_CONTAINER: &str = "scorer";
/// Longest Event note.
const MAX_NOTE: usize = 1024;

pub struct Options {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// Image of the stage Jobs when a resource's `spec.job.image` is unset.
    pub runner_image: Option<String>,
    /// Leader election; `None` runs without (one replica only).
    pub lease: Option<LeaseOptions>,
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Reconcile again this often while stages run: to refresh their progress in status, and
    /// as a safety net under the Job watches.
    pub progress_refresh: Duration,
    /// The images, ServiceAccounts and endpoint hosts resources may name.
    pub policy: Policy,
}

pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's identity, usually its Pod name.
    pub identity: String,
}

/// Runs the controllers until a termination signal (or the loss of the leader Lease).
pub async fn run(options: Options) -> Result<()> {
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Serve { addr: options.listen, source })?;
    tokio::spawn(serve::serve(listener, health.clone()));
    let client = Client::try_default().await.map_err(Error::Connect)?;
    // A standby is ready too: it serves and waits for the Lease.
    health.ready.store(true, Ordering::Relaxed);
    let mut leadership = match options.lease {
        Some(l) => Some(Leadership::new(client.clone(), &l.namespace, &l.name, &l.identity).await?),
        None => None,
    };
    if let Some(leadership) = &mut leadership {
        leadership.acquire().await?;
    }
    health.metrics.set_leader(true);
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        backoff: Backoff::default(),
        health: health.clone(),
        results: Results::default(),
        runner_image: options.runner_image,
        namespace: options.namespace,
        progress_refresh: options.progress_refresh,
        policy: options.policy,
    });
    let controllers = run_controllers(ctx);
    let outcome = match &leadership {
        Some(leadership) => tokio::select! {
            () = controllers => Ok(()),
            lost = leadership.hold() => Err(lost),
        },
        None => {
            controllers.await;
            Ok(())
        }
    };
    health.metrics.set_leader(false);
    // On a termination signal, free the Lease so that a standby takes over at once rather than
    // once it expires.
    if let (Some(leadership), Ok(())) = (&leadership, &outcome) {
        leadership.release().await;
    }
    outcome
}

struct Context {
    client: Client,
    recorder: Recorder,
    backoff: Backoff,
    health: Arc<Health>,
    results: Results,
    runner_image: Option<String>,
    namespace: Option<String>,
    progress_refresh: Duration,
    policy: Policy,
}

impl Context {
    /// The objects of a kind the controllers watch: in the one namespace, or in all.
    fn watched<T>(&self) -> Api<T>
    where
        T: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }
}

async fn run_controllers(ctx: Arc<Context>) {
    let source_groups = controller::<SourceGroup>(&ctx);
    let rubric_sets = watching::<RubricSet, SourceGroup>(controller(&ctx), &ctx, |rs| Some(&rs.spec.source_group_ref));
    let distillation_jobs =
        watching::<DistillationJob, RubricSet>(controller(&ctx), &ctx, |dj| Some(&dj.spec.rubric_set_ref));
    // A FilterRun names a DistillationJob (method mira) or, for a baseline, a SourceGroup.
    let filter_runs =
        watching::<FilterRun, DistillationJob>(controller(&ctx), &ctx, |fr| fr.spec.distillation_job_ref.as_ref());
    let filter_runs = watching::<FilterRun, SourceGroup>(filter_runs, &ctx, |fr| fr.spec.source_group_ref.as_ref());
    futures::join!(
        drive(source_groups, ctx.clone()),
        drive(rubric_sets, ctx.clone()),
        drive(distillation_jobs, ctx.clone()),
        drive(filter_runs, ctx.clone()),
    );
}

/// A controller of kind `K` that also watches the Jobs and ConfigMaps it owns. Objects are
/// wrapped in [`DeserializeGuard`], so one malformed object never stalls the watcher.
fn controller<K: Pipeline>(ctx: &Context) -> Controller<DeserializeGuard<K>> {
    let children = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(ctx.watched::<DeserializeGuard<K>>(), watcher::Config::default().any_semantic())
        .owns(ctx.watched::<Job>(), children.clone())
        .owns(ctx.watched::<ConfigMap>(), children)
        .shutdown_on_signal()
}

/// Also reconciles a resource when its upstream (kind `U`, named by `reference`) changes.
fn watching<K, U>(
    controller: Controller<DeserializeGuard<K>>,
    ctx: &Context,
    reference: fn(&K) -> Option<&String>,
) -> Controller<DeserializeGuard<K>>
where
    K: Pipeline,
    U: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let store = controller.store();
    controller.watches(ctx.watched::<DeserializeGuard<U>>(), watcher::Config::default(), move |upstream| {
        let (name, namespace) = (upstream.name_any(), upstream.namespace());
        store
            .state()
            .into_iter()
            .filter(|guard| matches!(&guard.0, Ok(o) if reference(o) == Some(&name) && o.namespace() == namespace))
            .map(|guard| ObjectRef::from_obj(&*guard))
            .collect::<Vec<_>>()
    })
}

async fn drive<K: Pipeline>(controller: Controller<DeserializeGuard<K>>, ctx: Arc<Context>) {
    controller
        .run(reconcile_guarded::<K>, error_policy::<K>, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(kind = %K::kind(&()), error = %e, "reconcile ended with an error");
            }
        })
        .await;
}

async fn reconcile_guarded<K: Pipeline>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<controller::Action> {
    let object = guard.0.as_ref().map_err(|invalid| Error::InvalidObject(Box::new(invalid.clone())))?;
    let started = Instant::now();
    let result = Reconciler { ctx: &ctx, object }.run().await;
    ctx.health.metrics.reconciled(&K::kind(&()), started.elapsed());
    if result.is_ok() {
        ctx.backoff.succeeded(&backoff_key(&guard));
    }
    result
}

/// Errors become Events whose reason is the error's category. A transient error is retried after
/// a delay that grows with each consecutive failure of the object; a permanent one waits for a
/// change ([`Error::retry`]).
fn error_policy<K: Pipeline>(guard: Arc<DeserializeGuard<K>>, error: &Error, ctx: Arc<Context>) -> controller::Action {
    ctx.health.metrics.failed(&K::kind(&()), error);
    tracing::warn!(kind = %K::kind(&()), name = %guard.name_any(), error = %error.chain(), "reconcile failed");
    let event = Event {
        type_: EventType::Warning,
        reason: error.category().into(),
        note: Some(reconcile::truncate(&error.chain(), MAX_NOTE)),
        action: "Reconcile".into(),
        secondary: None,
    };
    let (recorder, reference) = (ctx.recorder.clone(), guard.object_ref(&()));
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "publishing an Event failed");
        }
    });
    match error.retry() {
        Retry::AwaitChange => controller::Action::await_change(),
        Retry::Backoff => controller::Action::requeue(ctx.backoff.failed(&backoff_key(&guard))),
    }
}

/// An object's key in the backoff counts: its kind, namespace and name.
fn backoff_key<K: Pipeline>(guard: &DeserializeGuard<K>) -> String {
    format!("{}/{}/{}", K::kind(&()), guard.namespace().unwrap_or_default(), guard.name_any())
}

/// One reconcile of one object: fetch, decide (pure), apply.
struct Reconciler<'a, K> {
    ctx: &'a Context,
    object: &'a K,
}

impl<K: Pipeline> Reconciler<'_, K> {
    async fn run(&self) -> Result<controller::Action> {
        let namespace =
            self.object.namespace().ok_or_else(|| Error::InvalidSpec("MIRA resources are namespaced".into()))?;
        let lineage = self.lineage(&namespace).await?;
        let jobs = self.jobs(&namespace).await?;
        let config = match self.object.storage(&lineage) {
            Some(spec) => Some(self.storage(&namespace, spec).await?),
            None => None,
        };
        let (results, progress) = match &config {
            Some(config) => self.ctx.results.observe(self.object, &lineage, &jobs, config).await?,
            None => Default::default(),
        };
        let input = Input {
            resource: self.object,
            lineage: &lineage,
            jobs: &jobs,
            results: &results,
            progress: &progress,
            policy: &self.ctx.policy,
        };
        let output = reconcile::reconcile(&input, &Time(Timestamp::now()));
        for action in &output.actions {
            self.apply(&namespace, action, config.as_ref()).await?;
        }
        let active = output
            .status
            .pipeline()
            .stages
            .iter()
            .any(|r| matches!(r.phase, StagePhase::Pending | StagePhase::Running));
        // Before the status that records the new revision: a report that failed to be written
        // is written again on the next pass.
        if let Some(config) = &config {
            // Beside the other selections of the namespace finished by now, listed only when the
            // report is written (once per selection); `mira report` compares again on demand.
            let peers = async {
                filter_runs_with_lineage(&self.ctx.client, &namespace).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e.chain(), "listing the other FilterRuns for the report failed");
                    Vec::new()
                })
            };
            if let Some(uri) = report::write_if_filter_run(self.object, &output.status, &lineage, peers, config).await?
            {
                tracing::info!(kind = %K::kind(&()), name = %self.object.name_any(), %uri, "wrote the run report");
            }
        }
        if self.object.status() != Some(&output.status) {
            self.write_status(&namespace, &output.status).await?;
        }
        Ok(controller::Action::requeue(if active { self.ctx.progress_refresh } else { REQUEUE_IDLE }))
    }

    async fn lineage(&self, namespace: &str) -> Result<Lineage> {
        fetch_lineage(&self.ctx.client, namespace, self.object.upstream_ref()).await
    }

    /// The resource's Jobs, by name. A failed Job's log is its last failed worker's termination
    /// message, looked up once: while its stage is not yet recorded as failed.
    async fn jobs(&self, namespace: &str) -> Result<BTreeMap<String, JobState>> {
        let api = Api::<Job>::namespaced(self.ctx.client.clone(), namespace);
        let selector = format!("{LABEL_RESOURCE}={}", self.object.name_any());
        let jobs = api.list(&ListParams::default().labels(&selector)).await.map_err(Error::ListJobs)?;
        let uid = self.object.uid();
        let recorded_failed = |job: &str| {
            self.object.status().is_some_and(|s| {
                s.pipeline().stages.iter().any(|r| r.job.as_deref() == Some(job) && r.phase == StagePhase::Failed)
            })
        };
        let mut states = BTreeMap::new();
        for job in jobs.items.into_iter().filter(|j| j.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
        {
            let name = job.name_any();
            let mut state = children::job_state(&job);
            if let JobState::Failed { log, .. } = &mut state {
                if !recorded_failed(&name) {
                    let pods = Api::<Pod>::namespaced(self.ctx.client.clone(), namespace)
                        .list(&ListParams::default().labels(&format!("{LABEL_JOB_NAME}={name}")))
                        .await
                        .map_err(|source| Error::ListPods { job: name.clone(), source })?;
                    if let Some(tail) = children::failure_log(&pods.items) {
                        *log = tail;
                    }
                }
            }
            states.insert(name, state);
        }
        Ok(states)
    }

    /// Storage settings, with the credentials Secret's keys when one is named. A resource that
    /// names none has its results read with the operator's own credentials (its environment);
    /// one that names a Secret the operator may not read is not: its results are read with its
    /// own keys or not at all (the Secret's `get` is refused: `rbac.readSecrets`, or a namespaced
    /// install), so that no resource reads, through the operator, what its own keys could not.
    async fn storage(&self, namespace: &str, spec: &StorageSpec) -> Result<StorageConfig> {
        let mut config = spec.config();
        let Some(name) = &spec.credentials_secret else { return Ok(config) };
        let secret = Api::<Secret>::namespaced(self.ctx.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|source| Error::ReadSecret { secret: format!("{namespace}/{name}"), source })?;
        let key = |k: &str| secret.data.as_ref()?.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
        config.access_key_id = key("AWS_ACCESS_KEY_ID");
        config.secret_access_key = key("AWS_SECRET_ACCESS_KEY");
        Ok(config)
    }

    async fn apply(&self, namespace: &str, action: &Action, config: Option<&StorageConfig>) -> Result<()> {
        let client = self.ctx.client.clone();
        let resource = self.object.name_any();
        let owner = self
            .object
            .controller_owner_ref(&())
            .ok_or_else(|| Error::InvalidSpec("the object has no uid yet".into()))?;
        match action {
            Action::CreatePlanConfigMap { name, step, group, plan, output } => {
                // The plan goes to storage, beside the outputs it addresses; the ConfigMap names
                // it and its SHA-256, so that its size does not grow with the run's.
                let config = config.ok_or_else(|| Error::UpstreamIncomplete("no storage for the plan".into()))?;
                let uri = join(output, PLAN);
                self.ctx
                    .results
                    .storage(config)
                    .put(&uri, plan.clone().into_bytes().into())
                    .await
                    .map_err(|source| Error::StorePlan { uri: uri.clone(), source })?;
                let pointer = PlanRef {
                    plan_uri: uri,
                    sha256: sha256_hex(plan.as_bytes()),
                    storage: StorageConfig { access_key_id: None, secret_access_key: None, ..config.clone() },
                };
                let config_map = children::plan_config_map(
                    &owner,
                    namespace,
                    name,
                    children::labels(&resource, *step, group.as_deref()),
                    &serde_json::to_string(&pointer).expect("a plan reference serializes"),
                );
                // Created once: its name is its Job's, which a digest of the plan makes unique,
                // so one of that name holds this plan. The operator never patches nor deletes a
                // ConfigMap (its RBAC has neither verb): they go with their resource.
                let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                match Api::<ConfigMap>::namespaced(client, namespace).create(&params, &config_map).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(source) => return Err(Error::CreateConfigMap { name: name.clone(), source }),
                }
            }
            Action::CreateJob(request) => {
                let job = children::job(&owner, namespace, &resource, request, self.ctx.runner_image.as_deref())?;
                let params = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
                // Created once, never re-applied: Kueue owns `suspend`, and a Job is immutable in
                // the parts that matter. An existing Job of this name is this stage's.
                match Api::<Job>::namespaced(client, namespace).create(&params, &job).await {
                    Ok(_) => {
                        tracing::info!(job = %request.name, stage = %request.stage, "created Job");
                        self.ctx.health.metrics.job_created(&K::kind(&()), request.step.as_str())
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(source) => return Err(Error::CreateJob { name: request.name.clone(), source }),
                }
            }
            Action::DeleteJob { name } => {
                match Api::<Job>::namespaced(client, namespace).delete(name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(source) => return Err(Error::DeleteJob { name: name.clone(), source }),
                }
            }
            Action::Event(event) => {
                let event = Event {
                    type_: if event.warning { EventType::Warning } else { EventType::Normal },
                    reason: event.reason.clone(),
                    note: Some(reconcile::truncate(&event.note, MAX_NOTE)),
                    action: event.action.into(),
                    secondary: event.job.as_ref().map(|job| ObjectReference {
                        api_version: Some("batch/v1".into()),
                        kind: Some("Job".into()),
                        name: Some(job.clone()),
                        namespace: Some(namespace.into()),
                        ..Default::default()
                    }),
                };
                if let Err(e) = self.ctx.recorder.publish(&event, &self.object.object_ref(&())).await {
                    tracing::warn!(error = %e, "publishing an Event failed");
                }
            }
        }
        Ok(())
    }

    /// Applies the whole status (every field and condition this manager owns).
    async fn write_status(&self, namespace: &str, status: &K::Status) -> Result<()> {
        let patch = serde_json::json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        Api::<K>::namespaced(self.ctx.client.clone(), namespace)
            .patch_status(&self.object.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::ApplyStatus)?;
        Ok(())
    }
}

/// The FilterRuns of `namespace`, each with its upstream chain: the selections a run report sets
/// beside its own. One whose chain cannot be read is left out.
pub async fn filter_runs_with_lineage(client: &Client, namespace: &str) -> Result<Vec<(FilterRun, Lineage)>> {
    let runs = Api::<FilterRun>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::GetObject { object: format!("FilterRuns in {namespace}"), source })?;
    let mut peers = Vec::new();
    for run in runs.items {
        match fetch_lineage(client, namespace, run.upstream_ref()).await {
            Ok(lineage) => peers.push((run, lineage)),
            Err(e) => tracing::debug!(filter_run = %run.name_any(), error = %e, "left out: its chain cannot be read"),
        }
    }
    Ok(peers)
}

/// The upstream chain from `first`, fetched up to the first missing object.
pub async fn fetch_lineage(client: &Client, namespace: &str, first: Option<UpstreamRef>) -> Result<Lineage> {
    let mut lineage = Lineage::default();
    let mut next = first;
    while let Some(reference) = next.take() {
        let found = match &reference {
            UpstreamRef::SourceGroup(name) => {
                get::<SourceGroup>(client, namespace, name).await?.map(Upstream::SourceGroup)
            }
            UpstreamRef::RubricSet(name) => get::<RubricSet>(client, namespace, name).await?.map(Upstream::RubricSet),
            UpstreamRef::DistillationJob(name) => {
                get::<DistillationJob>(client, namespace, name).await?.map(Upstream::DistillationJob)
            }
        };
        if let Some(found) = found {
            next = lineage.insert(found);
        }
    }
    Ok(lineage)
}

/// An object, or None where there is none.
pub async fn get<
    T: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<T>> {
    Api::<T>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| Error::GetObject { object: format!("{} {namespace}/{name}", T::kind(&())), source })
}
