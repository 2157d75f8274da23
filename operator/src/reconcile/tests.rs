//! The stage engine, driven as the adapters drive it: a fake world of Jobs and results, one pass
//! at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use scorer_runner::histogram::{Cut, Histogram, TieDraw};
use scorer_runner::plan::{
    self, rubrics_digest, ClusterResult, DistillResult, GroupDef, LabelResult, Manifest, ScopedCut, ScoreResult,
    ScoreTotals, SourceSample, StepPlan, StepResult, StudentReport, ThresholdResult,
};
use scorer_runner::progress::Snapshot;
use serde_json::Value;

use super::*;
use crate::api::*;

// ---- fixtures ----

fn now() -> Time {
    Time(Timestamp::from_second(1_000_000).unwrap())
}

fn meta<K: kube::Resource>(object: &mut K, name: &str, generation: i64) {
    let meta = object.meta_mut();
    meta.name = Some(name.into());
    meta.namespace = Some("ns".into());
    meta.uid = Some(format!("uid-{name}"));
    meta.generation = Some(generation);
}

fn source(name: &str) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        uri: format!("s3://corpus/{name}/"),
        format: None,
        text: None,
        shard_fraction: None,
    }
}

/// A Ready pipeline status at `generation`.
fn ready(generation: i64, revision: &str, upstream: Option<&str>) -> PipelineStatus {
    PipelineStatus {
        observed_generation: Some(generation),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Succeeded".into(),
            message: String::new(),
            observed_generation: Some(generation),
            last_transition_time: now(),
        }],
        revision: Some(revision.into()),
        upstream_revision: upstream.map(str::to_string),
        ..Default::default()
    }
}

fn source_group() -> SourceGroup {
    let mut sg = SourceGroup::new(
        "corpus",
        SourceGroupSpec {
            storage: StorageSpec { credentials_secret: Some("s3-creds".into()), ..Default::default() },
            root: "s3://bucket/mira".into(),
            sources: vec![source("py"), source("js"), source("web")],
            grouping: GroupingSpec::default(),
            job: JobTemplate::default(),
        },
    );
    meta(&mut sg, "corpus", 1);
    sg
}

fn ready_source_group() -> SourceGroup {
    let mut sg = source_group();
    sg.status = Some(SourceGroupStatus {
        pipeline: ready(1, "sg-rev", None),
        groups: vec![
            GroupDef { name: "code".into(), sources: vec!["py".into(), "js".into()] },
            GroupDef { name: "prose".into(), sources: vec!["web".into()] },
        ],
        ..Default::default()
    });
    sg
}

fn teacher() -> ModelSpec {
    ModelSpec {
        local: None,
        endpoint: Some(EndpointModel {
            url: "http://teacher:8000/v1".into(),
            model: "judge".into(),
            api_key_secret: Some(SecretKeyRef { name: "teacher".into(), key: "token".into() }),
            max_concurrency: None,
        }),
    }
}

fn rubric_set() -> RubricSet {
    let mut rs = RubricSet::new(
        "rubrics",
        RubricSetSpec {
            source_group_ref: "corpus".into(),
            teacher: teacher(),
            scale: Scale::default(),
            max_record_tokens: Some(777),
            discovery: DiscoverySpec::default(),
            pinned: Vec::new(),
            job: JobTemplate::default(),
        },
    );
    meta(&mut rs, "rubrics", 1);
    rs
}

fn dimension(id: &str) -> Dimension {
    Dimension {
        id: id.into(),
        name: id.into(),
        description: format!("{id} quality"),
        guide: format!("1: no {id}; 5: {id}"),
    }
}

fn ready_rubric_set() -> RubricSet {
    let mut rs = rubric_set();
    let rubric = |name: &str| GroupRubric {
        name: name.into(),
        pinned: false,
        dimensions: vec![AnchoredDimension { dimension: dimension("clarity"), support: Some(4) }],
        proposals: None,
    };
    let summary = |name: &str| RubricSummary { name: name.into(), pinned: false, dimensions: 1 };
    rs.status = Some(RubricSetStatus {
        pipeline: ready(1, "rs-rev", Some("sg-rev")),
        groups: vec![summary("code"), summary("prose")],
        discovered: Some("s3://bucket/mira/default/rubricsets/rubrics/discover/0123/_result.json".into()),
        digest: Some(rubrics_digest(&[rubric("code"), rubric("prose")])),
        ..Default::default()
    });
    rs
}

fn distillation_job() -> DistillationJob {
    let mut dj = DistillationJob::new("students", DistillationJobSpec::new("rubrics"));
    meta(&mut dj, "students", 1);
    dj
}

fn ready_distillation_job() -> DistillationJob {
    let mut dj = distillation_job();
    let student = |group: &str| StudentStatus {
        group: group.into(),
        student: format!("s3://bucket/students/{group}.student"),
        train_records: 100,
        validation_records: 20,
        dimensions: 2,
        sources: 1,
        masked: 0,
        summary: "scores by signal, noise".into(),
    };
    dj.status = Some(DistillationJobStatus {
        pipeline: ready(1, "dj-rev", Some("rs-rev")),
        students: vec![student("code"), student("prose")],
        ..Default::default()
    });
    dj
}

fn filter_run(policy: CutPolicy) -> FilterRun {
    let mut fr = FilterRun::new(
        "filter",
        FilterRunSpec {
            distillation_job_ref: Some("students".into()),
            source_group_ref: None,
            method: Method::Mira,
            perplexity: None,
            dsir: None,
            retention: 0.5,
            policy,
            group_retention: BTreeMap::new(),
            tokens: TokensSpec::default(),
            trim: None,
            histogram_bins: None,
            output: "s3://bucket/kept".into(),
            on_no_reliable_dimension: NoReliableDimension::Fail,
            allow_unusable_sources: false,
            job: JobTemplate::default(),
        },
    );
    meta(&mut fr, "filter", 1);
    fr
}

fn full_lineage() -> Lineage {
    Lineage {
        source_group: Some(ready_source_group()),
        rubric_set: Some(ready_rubric_set()),
        distillation_job: Some(ready_distillation_job()),
    }
}

/// Agreement on 30 held-out records, masked or not.
fn agreement(source: &str, dimension: &str, masked: bool) -> Agreement {
    Agreement {
        source: source.into(),
        dimension: dimension.into(),
        records: 30,
        mae: 0.5,
        spearman: Some(0.1),
        masked,
        reason: None,
    }
}

// ---- a fake world the actions act on ----

#[derive(Default)]
struct World {
    jobs: BTreeMap<String, JobState>,
    results: StepResults,
    progress: StageProgress,
    policy: Policy,
}

impl World {
    /// One reconcile pass; applies the actions to the world and the status to the resource.
    fn pass<K: Pipeline>(&mut self, resource: &mut K, lineage: &Lineage) -> Vec<Action> {
        let output = reconcile(
            &Input {
                resource: &*resource,
                lineage,
                jobs: &self.jobs,
                results: &self.results,
                progress: &self.progress,
                policy: &self.policy,
            },
            &now(),
        );
        for action in &output.actions {
            match action {
                Action::CreateJob(request) => {
                    self.jobs.insert(request.name.clone(), JobState::Running);
                }
                Action::DeleteJob { name } => {
                    self.jobs.remove(name);
                }
                Action::CreatePlanConfigMap { .. } | Action::Event(_) => {}
            }
        }
        let status = serde_json::to_value(&output.status).unwrap();
        assert_eq!(empty_strings("status", &status), Vec::<String>::new(), "statuses hold no empty strings");
        *resource.status_mut() = Some(output.status);
        output.actions
    }

    /// The stage's Job succeeds and its result appears.
    fn succeed<K: Pipeline>(&mut self, resource: &K, stage: &str) {
        let result = result_of(&record(resource, stage));
        self.succeed_with(resource, stage, result);
    }

    /// The stage's Job succeeded with `result`.
    fn succeed_with<K: Pipeline>(&mut self, resource: &K, stage: &str, result: Value) {
        let record = record(resource, stage);
        self.jobs.insert(record.job.clone().expect("stage has a job"), JobState::Succeeded);
        let mut result = StepResult::parse(record.step, &serde_json::to_vec(&result).unwrap()).unwrap();
        result.slim();
        self.results.insert(record.output.clone(), Arc::new(result));
    }

    fn fail<K: Pipeline>(&mut self, resource: &K, stage: &str, log: &str) {
        let job = record(resource, stage).job.expect("stage has a job");
        self.jobs.insert(job, JobState::Failed { reason: "BackoffLimitExceeded".into(), log: log.into() });
    }
}

/// The paths of empty strings in a JSON value. API servers before 1.22 turn them into `null`
/// under server-side apply and then reject the status, so the engine never writes one.
fn empty_strings(path: &str, value: &Value) -> Vec<String> {
    match value {
        Value::String(s) if s.is_empty() => vec![path.to_string()],
        Value::Array(items) => {
            items.iter().enumerate().flat_map(|(i, v)| empty_strings(&format!("{path}[{i}]"), v)).collect()
        }
        Value::Object(map) => map.iter().flat_map(|(k, v)| empty_strings(&format!("{path}.{k}"), v)).collect(),
        _ => Vec::new(),
    }
}

fn record<K: Pipeline>(resource: &K, stage: &str) -> StageRecord {
    stages(resource).into_iter().find(|r| r.name == stage).unwrap_or_else(|| panic!("no stage {stage}"))
}

fn stages<K: Pipeline>(resource: &K) -> Vec<StageRecord> {
    resource.status().map(|s| s.pipeline().stages.clone()).unwrap_or_default()
}

fn condition<K: Pipeline>(resource: &K, type_: &str) -> Condition {
    resource
        .status()
        .and_then(|s| s.pipeline().condition(type_).cloned())
        .unwrap_or_else(|| panic!("no condition {type_}"))
}

fn created(actions: &[Action]) -> Vec<String> {
    actions.iter().filter_map(|a| if let Action::CreateJob(r) = a { Some(r.stage.clone()) } else { None }).collect()
}

fn events(actions: &[Action]) -> Vec<(bool, String)> {
    actions
        .iter()
        .filter_map(|a| if let Action::Event(e) = a { Some((e.warning, e.reason.clone())) } else { None })
        .collect()
}

/// A plausible result for a finished stage.
fn result_of(record: &StageRecord) -> Value {
    let group = record.group.clone().unwrap_or_default();
    let cut = || Cut {
        bin: 5,
        threshold: 3.0,
        total_tokens: 1000,
        target_tokens: 500,
        kept_tokens: 510,
        kept_records: 5,
        total_records: 10,
        error_bound_tokens: 20,
        // 400 tokens ranked above the cut's bin, 110 drawn among the 2 records tied in it.
        tie: Some(TieDraw { bin: 5, below: 400, records: 2, tokens: 110 }),
    };
    let kept = plan::Kept { kept_records: 5, total_records: 10, kept_tokens: 510, total_tokens: 1000 };
    let value = match record.step {
        Step::Cluster => serde_json::to_value(ClusterResult {
            groups: vec![
                GroupDef { name: "code".into(), sources: vec!["py".into(), "js".into()] },
                GroupDef { name: "prose".into(), sources: vec!["web".into()] },
            ],
            sources: ["py", "js", "web"]
                .iter()
                .map(|s| SourceSample {
                    name: (*s).into(),
                    shards: 2,
                    bytes: 100,
                    sampled_records: 50,
                    skipped: Default::default(),
                })
                .collect(),
            similarity: vec![vec![1.0, 0.81234, 0.1], vec![0.81234, 1.0, 0.2], vec![0.1, 0.2, 1.0]],
            silhouette: 0.4,
        }),
        Step::Label => serde_json::to_value(LabelResult {
            labels: format!("{}/labels/", record.output),
            labelled: BTreeMap::from([("code".to_string(), 40), ("prose".to_string(), 40)]),
            skipped: Default::default(),
        }),
        Step::Distill => serde_json::to_value(DistillResult {
            students: vec![StudentReport {
                group: "prose".into(),
                student: "s3://bucket/students/prose".into(),
                train_records: 70,
                validation_records: 30,
                lambdas: BTreeMap::new(),
                agreement: vec![agreement("web", "signal", false), agreement("web", "noise", true)],
                masked: BTreeMap::from([("web".into(), vec!["noise".into()])]),
            }],
            sft: None,
            skipped_labels: Default::default(),
        }),
        Step::Score => serde_json::to_value(ScoreResult {
            groups: vec![ScoreTotals {
                group,
                source: None,
                shards: 2,
                records: 10,
                tokens: 1000,
                skipped: Default::default(),
                histogram: Histogram::new(1.0, 5.0, 10),
                length: Default::default(),
                length_correlation: None,
                unranked: false,
            }],
            sources: Vec::new(),
            masked: BTreeMap::new(),
        }),
        Step::Threshold => serde_json::to_value(ThresholdResult {
            policy: plan::CutPolicy::Group,
            cuts: vec![ScopedCut {
                scope: if group.is_empty() { "global".into() } else { group },
                retention: 0.5,
                skipped_tokens: 0,
                cut: cut(),
            }],
            lengths: Vec::new(),
        }),
        Step::Select => serde_json::to_value(Manifest {
            total: kept.clone(),
            groups: BTreeMap::from([(group, kept)]),
            sources: BTreeMap::new(),
            thresholds: ThresholdResult { policy: plan::CutPolicy::Group, cuts: Vec::new(), lengths: Vec::new() },
            masked: BTreeMap::new(),
            shards: Vec::new(),
            samples: BTreeMap::new(),
        }),
        Step::Discover => serde_json::to_value(plan::DiscoverResult { groups: Vec::new() }),
    };
    value.expect("result serializes")
}

// ---- a stage's life ----

#[test]
fn a_new_source_group_starts_one_cluster_job() {
    let (mut world, mut sg) = (World::default(), source_group());
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(matches!(&actions[0], Action::CreatePlanConfigMap { name, .. } if name.starts_with("corpus-cluster-g1-")));
    assert_eq!(created(&actions), ["cluster"]);
    assert_eq!(events(&actions), [(false, "StageStarted".to_string())]);
    let cluster = record(&sg, "cluster");
    assert_eq!(cluster.phase, StagePhase::Pending);
    assert!(cluster.output.starts_with("s3://bucket/mira/ns/sourcegroups/corpus/cluster/"), "{}", cluster.output);
    assert_eq!(
        (condition(&sg, "Ready").status.as_str(), condition(&sg, "Ready").reason.as_str()),
        ("False", "Running")
    );
    assert_eq!(condition(&sg, "Clustered").reason, "Running");
    assert_eq!(sg.status.as_ref().unwrap().pipeline.stage.as_deref(), Some("cluster"));
}

#[test]
fn a_stage_asking_for_what_the_policy_refuses_fails_not_allowed_without_a_job() {
    let mut world = World {
        policy: Policy { images: vec!["registry.example.com/mira/*".into()], ..Default::default() },
        ..Default::default()
    };
    let mut sg = source_group();
    sg.spec.job.image = Some("evil.example.org/miner:1".into());
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(created(&actions).is_empty(), "no Job for a refused image");
    let cluster = record(&sg, "cluster");
    assert_eq!((cluster.phase, cluster.reason.as_deref()), (StagePhase::Failed, Some("NotAllowed")));
    assert!(cluster.message.unwrap().contains("evil.example.org/miner:1"));
    assert_eq!(events(&actions), [(true, "NotAllowed".to_string())]);
    assert_eq!(condition(&sg, "Clustered").reason, "NotAllowed");

    // The teacher's endpoint host is checked in the plan the stage would run.
    world.policy = Policy { endpoint_hosts: vec!["*.models.svc.cluster.local".into()], ..Default::default() };
    let lineage = Lineage { source_group: Some(ready_source_group()), ..Default::default() };
    let mut rs = rubric_set();
    let actions = world.pass(&mut rs, &lineage);
    assert!(created(&actions).is_empty());
    let refused = stages(&rs).into_iter().find(|r| r.phase == StagePhase::Failed).expect("a refused stage");
    assert!(refused.message.unwrap().contains("\"teacher\""), "the host is named");
    world.policy.endpoint_hosts.push("teacher".into());
    let mut rs = rubric_set();
    rs.metadata.generation = Some(2);
    assert!(!created(&world.pass(&mut rs, &lineage)).is_empty(), "an allowed host runs");
}

#[test]
fn the_job_request_carries_the_template_and_secrets() {
    let (mut world, mut sg) = (World::default(), source_group());
    sg.spec.job.workers = Some(4);
    let actions = world.pass(&mut sg, &Lineage::default());
    let Some(Action::CreateJob(request)) = actions.iter().find(|a| matches!(a, Action::CreateJob(_))) else {
        panic!("no job")
    };
    assert_eq!(request.template.workers, Some(4));
    let envs: Vec<&str> = request.secrets.iter().map(|s| s.env.as_str()).collect();
    assert_eq!(envs, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
}

#[test]
fn the_plan_names_its_own_output_and_the_runner_defaults_fill_the_rest() {
    let (mut world, mut sg) = (World::default(), source_group());
    sg.spec.grouping.max_k = Some(3);
    let actions = world.pass(&mut sg, &Lineage::default());
    let Some(Action::CreatePlanConfigMap { plan, .. }) = actions.first() else { panic!("no plan") };
    let plan: plan::ClusterPlan = serde_json::from_str(plan).unwrap();
    assert_eq!(plan.output, record(&sg, "cluster").output);
    assert_eq!(plan.max_k, 3);
    assert_eq!(plan.sources.len(), 3);
    assert_eq!(
        plan.sample_per_source,
        serde_json::from_value::<plan::ClusterPlan>(serde_json::json!({"output": "", "sources": []}))
            .unwrap()
            .sample_per_source
    );
}

#[test]
fn a_running_job_is_neither_recreated_nor_announced_again() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    let before = sg.status.clone();
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(record(&sg, "cluster").phase, StagePhase::Running);
    assert_eq!(before.unwrap().pipeline.conditions, sg.status.as_ref().unwrap().pipeline.conditions);
}

#[test]
fn a_running_stage_shows_its_workers_progress_and_keeps_the_last_figures_once_done() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.pass(&mut sg, &Lineage::default());
    assert_eq!(sg.status.as_ref().unwrap().pipeline.progress, None, "nothing reported yet");
    let output = record(&sg, "cluster").output;
    let reported = |done, finished| Snapshot {
        units_done: done,
        units_resumed: 0,
        units_total: 3,
        records: 600,
        bytes: 0,
        elapsed_seconds: 30.0,
        workers: 1,
        finished,
    };
    world.progress.insert(output.clone(), reported(1, false));
    world.pass(&mut sg, &Lineage::default());
    assert_eq!(record(&sg, "cluster").progress, Some(reported(1, false)));
    assert_eq!(
        sg.status.as_ref().unwrap().pipeline.progress.as_deref(),
        Some("cluster 1/3 units, 20 records/s, ETA 1m00s")
    );
    // The result lands a moment before the worker's last progress.
    world.progress.insert(output.clone(), reported(2, false));
    world.succeed(&sg, "cluster");
    world.pass(&mut sg, &Lineage::default());
    assert_eq!(record(&sg, "cluster").progress, Some(reported(2, true)), "done, figures not final yet");
    world.progress.insert(output, reported(3, true));
    world.pass(&mut sg, &Lineage::default());
    assert_eq!(record(&sg, "cluster").progress, Some(reported(3, true)));
    assert_eq!(sg.status.as_ref().unwrap().pipeline.progress, None, "no stage runs");
}

#[test]
fn a_finished_stage_fills_status_and_makes_the_resource_ready() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.succeed(&sg, "cluster");
    let actions = world.pass(&mut sg, &Lineage::default());
    assert_eq!(events(&actions), [(false, "StageSucceeded".to_string())]);
    let status = sg.status.clone().unwrap();
    assert_eq!(status.groups.len(), 2);
    assert_eq!(status.group_count, Some(2), "the Groups column");
    assert_eq!(status.sources[0].group.as_deref(), Some("code"));
    let nearest =
        status.sources.iter().map(|s| s.nearest.clone().map(|n| (n.source, n.similarity))).collect::<Vec<_>>();
    let expected = [Some(("js".into(), 0.812)), Some(("py".into(), 0.812)), Some(("js".into(), 0.2))];
    assert_eq!(nearest, expected, "each source's nearest other source");
    assert_eq!(status.similarity, Some(format!("{}/_result.json", record(&sg, "cluster").output)), "the full matrix");
    assert!(status.pipeline.ready_at(Some(1)));
    assert!(status.pipeline.revision.is_some());
    assert_eq!(status.pipeline.stage.as_deref(), Some("Ready"));
    assert_eq!(condition(&sg, "Clustered").status, "True");
}

#[test]
fn a_ready_resource_reconciles_to_the_same_status_without_actions() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.succeed(&sg, "cluster");
    world.pass(&mut sg, &Lineage::default());
    let before = sg.status.clone();
    assert!(world.pass(&mut sg, &Lineage::default()).is_empty());
    assert_eq!(before, sg.status);
}

#[test]
fn a_finished_stage_whose_job_was_deleted_by_its_ttl_is_not_recreated() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.succeed(&sg, "cluster");
    world.pass(&mut sg, &Lineage::default());
    world.jobs.clear();
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(created(&actions).is_empty(), "{actions:?}");
    assert_eq!(record(&sg, "cluster").phase, StagePhase::Succeeded);
}

#[test]
fn a_stage_whose_job_finished_and_vanished_unobserved_is_done_by_its_result() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.succeed(&sg, "cluster");
    world.jobs.clear();
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(created(&actions).is_empty(), "{actions:?}");
    assert_eq!(record(&sg, "cluster").phase, StagePhase::Succeeded);
}

#[test]
fn a_job_created_but_never_recorded_is_adopted_by_its_stage() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    let job = record(&sg, "cluster").job.unwrap();
    world.succeed(&sg, "cluster");
    // The operator stopped before it wrote the status that names the Job.
    sg.status = None;
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(created(&actions).is_empty(), "{actions:?}");
    assert_eq!(events(&actions), [(false, "StageSucceeded".to_string())]);
    let record = record(&sg, "cluster");
    assert_eq!((record.job, record.phase, record.message), (Some(job), StagePhase::Succeeded, None));
}

#[test]
fn a_job_missing_while_its_stage_runs_is_created_again_under_the_same_name() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    let job = record(&sg, "cluster").job;
    world.jobs.clear();
    let actions = world.pass(&mut sg, &Lineage::default());
    assert_eq!(created(&actions), ["cluster"]);
    assert!(events(&actions).is_empty(), "a re-create is not a new start");
    assert_eq!(record(&sg, "cluster").job, job);
}

#[test]
fn a_failed_job_sets_the_stage_condition_from_the_runners_error_line() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.fail(&sg, "cluster", "INFO listing\nerror: StorageError: storage: list s3://corpus/py/: timed out\n");
    let actions = world.pass(&mut sg, &Lineage::default());
    assert_eq!(events(&actions), [(true, "StorageError".to_string())]);
    let clustered = condition(&sg, "Clustered");
    assert_eq!((clustered.status.as_str(), clustered.reason.as_str()), ("False", "StorageError"));
    assert_eq!(clustered.message, "cluster: storage: list s3://corpus/py/: timed out");
    assert_eq!(condition(&sg, "Ready").reason, "StorageError");
    assert_eq!(sg.status.as_ref().unwrap().pipeline.stage.as_deref(), Some("Failed"));
    // Failure is final for this generation, even once the failed Job is gone.
    world.jobs.clear();
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(actions.is_empty(), "{actions:?}");
}

#[test]
fn a_job_that_succeeds_without_a_result_fails_its_stage() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.jobs.insert(record(&sg, "cluster").job.unwrap(), JobState::Succeeded);
    world.pass(&mut sg, &Lineage::default());
    assert_eq!(condition(&sg, "Clustered").reason, "ResultMissing");
}

#[test]
fn failure_reasons_come_from_the_last_error_line_or_the_adapter() {
    assert_eq!(
        engine::failure("Exit1", "a\nerror: ShardError: bad shard x\n"),
        ("ShardError".into(), "bad shard x".into())
    );
    assert_eq!(engine::failure("Exit1", "error: --plan is required"), ("Exit1".into(), "--plan is required".into()));
    assert_eq!(
        engine::failure("DeadlineExceeded", "Job was active longer than specified"),
        ("DeadlineExceeded".into(), "Job was active longer than specified".into())
    );
    assert_eq!(engine::failure("OOMKilled", ""), ("OOMKilled".into(), "the Job failed without any output".into()));
}

// ---- generations ----

#[test]
fn a_generation_bump_retries_a_failed_stage() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.fail(&sg, "cluster", "error: ModelError: out of memory");
    world.pass(&mut sg, &Lineage::default());
    sg.spec.job.resources = Some(ComputeResources {
        memory: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Gi".into())),
        ..Default::default()
    });
    sg.metadata.generation = Some(2);
    let actions = world.pass(&mut sg, &Lineage::default());
    assert_eq!(created(&actions), ["cluster"]);
    let cluster = record(&sg, "cluster");
    assert!(cluster.job.unwrap().starts_with("corpus-cluster-g2-"));
    assert_eq!(cluster.generation, 2);
    assert_eq!(condition(&sg, "Ready").reason, "Running");
}

#[test]
fn a_generation_bump_reruns_the_stages_whose_plans_changed_and_reuses_the_rest() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    run_to_completion(&mut world, &mut fr, &lineage);
    let scored = record(&fr, "score/code");
    fr.spec.retention = 0.3;
    fr.metadata.generation = Some(2);
    let actions = world.pass(&mut fr, &lineage);
    assert_eq!(created(&actions), ["threshold/code", "threshold/prose"]);
    assert_eq!(record(&fr, "score/code"), scored, "an unchanged stage keeps its record");
    assert!(record(&fr, "threshold/code").job.unwrap().contains("-g2-"));
    assert!(stages(&fr).iter().all(|r| r.step != Step::Select), "selections wait for the new cuts");
    assert_eq!(condition(&fr, "Scored").status, "True");
    assert_eq!(condition(&fr, "Selected").reason, "Waiting");
}

#[test]
fn a_stage_replanned_while_running_has_its_old_job_deleted() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    world.pass(&mut fr, &lineage);
    let old = record(&fr, "score/code").job.unwrap();
    fr.spec.trim = Some(0.2);
    fr.metadata.generation = Some(2);
    let actions = world.pass(&mut fr, &lineage);
    assert!(actions.contains(&Action::DeleteJob { name: old.clone() }), "{actions:?}");
    assert_eq!(created(&actions), ["score/code", "score/prose"]);
    assert_ne!(record(&fr, "score/code").job.unwrap(), old);
}

#[test]
fn an_identical_earlier_result_is_reused_without_a_job() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.succeed(&sg, "cluster");
    // The adapters show a resource only the Jobs it owns.
    world.jobs.clear();
    let mut twin = source_group();
    let actions = world.pass(&mut twin, &Lineage::default());
    assert!(created(&actions).is_empty());
    assert_eq!(events(&actions), [(false, "StageReused".to_string())]);
    assert_eq!(record(&twin, "cluster").job, None);
    assert!(twin.status.unwrap().pipeline.ready_at(Some(1)));
}

#[test]
fn an_operator_that_plans_a_finished_stage_differently_does_not_redo_it() {
    let (mut world, mut sg) = (World::default(), source_group());
    world.pass(&mut sg, &Lineage::default());
    world.succeed(&sg, "cluster");
    world.pass(&mut sg, &Lineage::default());
    // As if an older operator version had planned (and addressed) the stage differently.
    let old_output = "s3://bucket/mira/ns/sourcegroups/corpus/cluster/0123456789abcdef".to_string();
    let record = record(&sg, "cluster");
    world.results.insert(old_output.clone(), world.results[&record.output].clone());
    world.results.remove(&record.output);
    sg.status.as_mut().unwrap().pipeline.stages[0].output = old_output.clone();
    let actions = world.pass(&mut sg, &Lineage::default());
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(self::record(&sg, "cluster").output, old_output);
    assert!(sg.status.unwrap().pipeline.ready_at(Some(1)));
}

// ---- gating ----

#[test]
fn a_rubric_set_waits_for_a_missing_source_group() {
    let (mut world, mut rs) = (World::default(), rubric_set());
    let actions = world.pass(&mut rs, &Lineage::default());
    assert!(actions.is_empty());
    let ready = condition(&rs, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Waiting"));
    assert_eq!(ready.message, "waiting for SourceGroup corpus: not found");
    assert_eq!(condition(&rs, "Discovered").reason, "Waiting");
    assert_eq!(rs.status.unwrap().pipeline.stage.as_deref(), Some("Waiting"));
}

#[test]
fn a_rubric_set_waits_until_its_source_group_is_ready_at_its_current_generation() {
    let mut sg = ready_source_group();
    sg.metadata.generation = Some(2);
    let lineage = Lineage { source_group: Some(sg), ..Default::default() };
    let (mut world, mut rs) = (World::default(), rubric_set());
    assert!(world.pass(&mut rs, &lineage).is_empty());
    let message = condition(&rs, "Ready").message;
    assert!(message.starts_with("waiting for SourceGroup corpus to be Ready at generation 2"), "{message}");
}

#[test]
fn a_rubric_set_starts_discovery_once_its_source_group_is_ready() {
    let lineage = Lineage { source_group: Some(ready_source_group()), ..Default::default() };
    let (mut world, mut rs) = (World::default(), rubric_set());
    let actions = world.pass(&mut rs, &lineage);
    assert_eq!(created(&actions), ["discover"]);
    let Some(Action::CreateJob(request)) = actions.iter().find(|a| matches!(a, Action::CreateJob(_))) else {
        unreachable!()
    };
    assert!(request
        .secrets
        .iter()
        .any(|s| s.env == "MIRA_TEACHER_API_KEY" && s.secret == "teacher" && s.key == "token"));
    assert_eq!(rs.status.unwrap().pipeline.upstream_revision.as_deref(), Some("sg-rev"));
}

#[test]
fn a_dependent_waits_while_its_upstream_has_not_caught_up_with_its_own_upstream() {
    let mut lineage = full_lineage();
    lineage.source_group.as_mut().unwrap().status.as_mut().unwrap().pipeline.revision = Some("sg-rev-2".into());
    let (mut world, mut dj) = (World::default(), distillation_job());
    assert!(world.pass(&mut dj, &lineage).is_empty());
    assert_eq!(condition(&dj, "Ready").message, "waiting for RubricSet rubrics to catch up with SourceGroup corpus");
}

#[test]
fn a_pinned_rubric_set_is_ready_without_a_discover_job() {
    let lineage = Lineage { source_group: Some(ready_source_group()), ..Default::default() };
    let mut rs = rubric_set();
    rs.spec.pinned = ["code", "prose"]
        .iter()
        .map(|g| PinnedGroup { group: (*g).into(), dimensions: vec![dimension("clarity")] })
        .collect();
    let mut world = World::default();
    assert!(world.pass(&mut rs, &lineage).is_empty());
    assert_eq!(condition(&rs, "Discovered").reason, "Skipped");
    let status = rs.status.unwrap();
    assert!(status.pipeline.ready_at(Some(1)));
    assert!(status.groups.iter().all(|g| g.pinned));
    assert_eq!((status.group_count, status.dimension_count), (Some(2), Some(2)), "the Groups and Dimensions columns");
}

#[test]
fn a_pinned_group_the_source_group_lacks_is_an_invalid_spec() {
    let lineage = Lineage { source_group: Some(ready_source_group()), ..Default::default() };
    let mut rs = rubric_set();
    rs.spec.pinned = vec![PinnedGroup { group: "math".into(), dimensions: vec![dimension("rigour")] }];
    let mut world = World::default();
    assert!(world.pass(&mut rs, &lineage).is_empty());
    assert_eq!(condition(&rs, "Ready").reason, "InvalidSpec");
}

// ---- chain order ----

#[test]
fn distillation_labels_first_then_distils_from_the_written_labels() {
    let lineage = full_lineage();
    let (mut world, mut dj) = (World::default(), distillation_job());
    assert_eq!(created(&world.pass(&mut dj, &lineage)), ["label"]);
    assert_eq!(condition(&dj, "Distilled").message, "waiting for label");
    world.succeed(&dj, "label");
    let actions = world.pass(&mut dj, &lineage);
    assert_eq!(created(&actions), ["distill"]);
    let Some(Action::CreatePlanConfigMap { plan, .. }) =
        actions.iter().rev().find(|a| matches!(a, Action::CreatePlanConfigMap { .. }))
    else {
        unreachable!()
    };
    let plan: plan::DistillPlan = serde_json::from_str(plan).unwrap();
    assert_eq!(plan.labels, format!("{}/labels/", record(&dj, "label").output));
    assert_eq!(dj.status.as_ref().unwrap().labelled.len(), 2);
}

#[test]
fn imported_labels_skip_the_label_stage() {
    let lineage = full_lineage();
    let (mut world, mut dj) = (World::default(), distillation_job());
    dj.spec.labels.import_uri = Some("s3://bucket/batch-labels/".into());
    assert_eq!(created(&world.pass(&mut dj, &lineage)), ["distill"]);
    assert_eq!(condition(&dj, "Labelled").reason, "Skipped");
    assert_eq!(dj.status.as_ref().unwrap().labels.as_deref(), Some("s3://bucket/batch-labels/"));
    world.succeed(&dj, "distill");
    world.pass(&mut dj, &lineage);
    let status = dj.status.unwrap();
    assert_eq!(
        (status.student_count, status.masked_share.as_deref()),
        (Some(1), Some("50% (1 of 2)")),
        "the Students and Masked columns"
    );
}

/// The last plan the actions write, and the secrets of every Job they create.
fn plan_and_secrets<T: serde::de::DeserializeOwned>(actions: &[Action]) -> (T, Vec<Vec<String>>) {
    let plan = actions.iter().rev().find_map(|a| match a {
        Action::CreatePlanConfigMap { plan, .. } => Some(serde_json::from_str(plan).unwrap()),
        _ => None,
    });
    let secrets = actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob(request) => {
                Some(request.secrets.iter().map(|s| format!("{}={}/{}", s.env, s.secret, s.key)).collect())
            }
            _ => None,
        })
        .collect();
    (plan.expect("a plan"), secrets)
}

#[test]
fn a_judge_student_reaches_the_distill_and_score_plans_with_its_api_key() {
    let judge = ModelSpec {
        local: None,
        endpoint: Some(EndpointModel {
            url: "http://judge.models:8000/v1".into(),
            model: "judge".into(),
            api_key_secret: Some(SecretKeyRef { name: "judge".into(), key: "token".into() }),
            max_concurrency: None,
        }),
    };
    let mut lineage = full_lineage();
    let (mut world, mut dj) = (World::default(), distillation_job());
    dj.spec.labels.import_uri = Some("s3://bucket/labels/".into());
    dj.spec.student.judge = Some(judge.clone());
    let (plan, secrets): (plan::DistillPlan, _) = plan_and_secrets(&world.pass(&mut dj, &lineage));
    let Some(plan::ModelSpec::Endpoint { url, api_key_env, .. }) = plan.judge else { panic!("no endpoint judge") };
    assert_eq!((url.as_str(), api_key_env.as_deref()), ("http://judge.models:8000/v1", Some("MIRA_JUDGE_API_KEY")));
    assert!(secrets[0].contains(&"MIRA_JUDGE_API_KEY=judge/token".to_string()), "{secrets:?}");

    lineage.distillation_job.as_mut().unwrap().spec.student.judge = Some(judge);
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    let (_, secrets): (plan::ScorePlan, _) = plan_and_secrets(&world.pass(&mut fr, &lineage));
    assert_eq!(secrets.len(), 2, "one score Job per group");
    assert!(secrets.iter().all(|s| s.contains(&"MIRA_JUDGE_API_KEY=judge/token".to_string())), "{secrets:?}");
}

#[test]
fn budgets_count_with_the_teachers_tokenizer_when_asked_and_say_why_not_when_it_has_none() {
    let teacher = |uri: &str, gguf: &[&str]| ModelSpec {
        local: Some(LocalModel {
            uri: uri.into(),
            gguf_files: gguf.iter().map(|f| f.to_string()).collect(),
            max_num_seqs: None,
        }),
        endpoint: None,
    };
    let mut lineage = full_lineage();
    lineage.rubric_set.as_mut().unwrap().spec.teacher = teacher("s3://models/smollm2/", &[]);
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    fr.spec.tokens.from_teacher = Some(true);
    let (plan, _): (plan::ScorePlan, _) = plan_and_secrets(&world.pass(&mut fr, &lineage));
    assert_eq!(plan.tokens, plan::TokenCounter::Tokenizer { uri: "s3://models/smollm2/tokenizer.json".into() });

    let gguf = teacher("s3://models/q/", &["model-q4.gguf"]);
    for (model, why) in [(gguf, "in GGUF files"), (self::teacher(), "behind an endpoint")] {
        lineage.rubric_set.as_mut().unwrap().spec.teacher = model;
        let mut refused = fr.clone();
        refused.status = None;
        World::default().pass(&mut refused, &lineage);
        let ready = condition(&refused, "Ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(ready.message.contains(why) && ready.message.contains("name tokens.tokenizer"), "{}", ready.message);
    }
}

#[test]
fn trim_and_histogram_bins_reach_the_score_plans() {
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    let (plan, _): (plan::ScorePlan, _) = plan_and_secrets(&world.pass(&mut fr, &full_lineage()));
    assert_eq!((plan.trim, plan.histogram_bins), (0.1, 10_000), "the defaults");
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    (fr.spec.trim, fr.spec.histogram_bins) = (Some(0.2), Some(500));
    let (plan, _): (plan::ScorePlan, _) = plan_and_secrets(&world.pass(&mut fr, &full_lineage()));
    assert_eq!((plan.trim, plan.histogram_bins), (0.2, 500));
}

#[test]
fn an_embedding_featurizer_reaches_the_distill_plan() {
    let (mut world, mut dj) = (World::default(), distillation_job());
    dj.spec.labels.import_uri = Some("s3://bucket/labels/".into());
    let model =
        LocalModel { uri: "s3://models/qwen3-embedding-0.6b/".into(), gguf_files: Vec::new(), max_num_seqs: Some(64) };
    dj.spec.student.featurizer.embedding = Some(EmbeddingFeaturizer { model });
    let (plan, _): (plan::DistillPlan, _) = plan_and_secrets(&world.pass(&mut dj, &full_lineage()));
    let scorer_runner::plan::FeaturizerSpec::Embedding { model: plan::ModelSpec::Local { uri, max_num_seqs, .. } } =
        plan.featurizer
    else {
        panic!("not an embedding featurizer: {:?}", plan.featurizer)
    };
    assert_eq!((uri.as_str(), max_num_seqs), ("s3://models/qwen3-embedding-0.6b/", Some(64)));
    assert!(plan.judge.is_none());
}

#[test]
fn a_group_is_thresholded_and_selected_as_soon_as_it_is_scored() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    assert_eq!(created(&world.pass(&mut fr, &lineage)), ["score/code", "score/prose"]);
    assert_eq!(fr.status.as_ref().unwrap().pipeline.stage.as_deref(), Some("score 0/2"));
    world.succeed(&fr, "score/code");
    assert_eq!(created(&world.pass(&mut fr, &lineage)), ["threshold/code"]);
    world.succeed(&fr, "threshold/code");
    assert_eq!(created(&world.pass(&mut fr, &lineage)), ["select/code"]);
    assert_eq!(condition(&fr, "Scored").message, "1/2 groups finished");
    let status = fr.status.clone().unwrap();
    assert_eq!(status.groups[0].tokens, Some(1000));
    assert_eq!(status.groups[0].cuts[0].cut.threshold, 3.0);
    assert_eq!(status.total, None, "no total before every group is selected");
}

#[test]
fn the_global_policy_cuts_once_every_group_is_scored() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Global));
    world.pass(&mut fr, &lineage);
    world.succeed(&fr, "score/code");
    assert!(created(&world.pass(&mut fr, &lineage)).is_empty());
    world.succeed(&fr, "score/prose");
    assert_eq!(created(&world.pass(&mut fr, &lineage)), ["threshold"]);
    world.succeed(&fr, "threshold");
    assert_eq!(created(&world.pass(&mut fr, &lineage)), ["select/code", "select/prose"]);
}

#[test]
fn plans_chain_each_stage_to_the_outputs_it_reads() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    fr.spec.group_retention = BTreeMap::from([("code".to_string(), 0.8)]);
    let plans = |actions: Vec<Action>| -> Vec<Value> {
        actions
            .into_iter()
            .filter_map(|a| {
                if let Action::CreatePlanConfigMap { plan, .. } = a {
                    serde_json::from_str(&plan).ok()
                } else {
                    None
                }
            })
            .collect()
    };
    let score = &plans(world.pass(&mut fr, &lineage))[0];
    assert_eq!(score["groups"][0]["ranker"]["student"], "s3://bucket/students/code.student");
    assert_eq!(score["groups"][0]["sources"].as_array().unwrap().len(), 2);
    world.succeed(&fr, "score/code");
    let threshold = &plans(world.pass(&mut fr, &lineage))[0];
    assert_eq!(threshold["scores"][0], record(&fr, "score/code").output.as_str());
    assert_eq!(threshold["groupRetention"]["code"], 0.8);
    world.succeed(&fr, "threshold/code");
    let select = &plans(world.pass(&mut fr, &lineage))[0];
    assert_eq!(select["threshold"], record(&fr, "threshold/code").output.as_str());
    assert!(select["output"].as_str().unwrap().starts_with("s3://bucket/kept/code/"));
}

#[test]
fn a_baseline_selects_from_its_source_group_alone_through_the_same_stages() {
    // No RubricSet, no DistillationJob: the baselines need neither.
    let lineage = Lineage { source_group: Some(ready_source_group()), ..Default::default() };
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Source));
    (fr.spec.distillation_job_ref, fr.spec.source_group_ref) = (None, Some("corpus".into()));
    fr.spec.method = Method::Random;
    assert_eq!(fr.upstream_ref(), Some(UpstreamRef::SourceGroup("corpus".into())));
    let plans: Vec<Value> = world
        .pass(&mut fr, &lineage)
        .into_iter()
        .filter_map(|a| match a {
            Action::CreatePlanConfigMap { plan, .. } => serde_json::from_str(&plan).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(plans.len(), 2, "a score stage per group");
    assert!(plans.iter().all(|p| p["groups"][0]["ranker"] == "random"), "{plans:?}");
    run_to_completion(&mut world, &mut fr, &lineage);
    assert_eq!(condition(&fr, "Ready").status, "True");
    assert_eq!(stages(&fr).len(), 6, "score, threshold and select per group");

    // DSIR carries its target into the plan; incoherent specs say why.
    let (mut world, mut dsir) = (World::default(), fr.clone());
    dsir.status = None;
    dsir.spec.method = Method::Dsir;
    dsir.spec.dsir = Some(DsirTarget { target: "s3://ref/".into(), format: None, text: None, sample: Some(500) });
    let score = world.pass(&mut dsir, &lineage).into_iter().find_map(|a| match a {
        Action::CreatePlanConfigMap { plan, .. } => serde_json::from_str::<Value>(&plan).ok(),
        _ => None,
    });
    let ranker = &score.unwrap()["groups"][0]["ranker"]["dsir"];
    assert_eq!((ranker["target"]["uri"].as_str(), ranker["sample"].as_u64()), (Some("s3://ref/"), Some(500)));

    // Perplexity carries its reference model into the plan.
    let (mut world, mut perplexity) = (World::default(), fr.clone());
    perplexity.status = None;
    perplexity.spec.method = Method::Perplexity;
    let model = LocalModel { uri: "s3://models/ref/".into(), gguf_files: vec![], max_num_seqs: Some(4) };
    perplexity.spec.perplexity = Some(PerplexityModel { model, max_tokens: Some(256) });
    let score = world.pass(&mut perplexity, &lineage).into_iter().find_map(|a| match a {
        Action::CreatePlanConfigMap { plan, .. } => serde_json::from_str::<Value>(&plan).ok(),
        _ => None,
    });
    let ranker = &score.unwrap()["groups"][0]["ranker"]["perplexity"];
    assert_eq!(ranker["model"]["uri"], "s3://models/ref/", "{ranker}");
    assert_eq!((ranker["model"]["maxNumSeqs"].as_u64(), ranker["maxTokens"].as_u64()), (Some(4), Some(256)));
    for (change, message) in [
        (
            (|f: &mut FilterRun| f.spec.dsir = None) as fn(&mut FilterRun),
            "dsir (the target sample) goes with method dsir",
        ),
        (|f| f.spec.trim = Some(0.1), "trim averages a student's dimensions"),
        (|f| f.spec.distillation_job_ref = Some("students".into()), "takes sourceGroupRef"),
        (
            |f| {
                let model = LocalModel { uri: "s3://models/ref/".into(), gguf_files: vec![], max_num_seqs: None };
                f.spec.perplexity = Some(PerplexityModel { model, max_tokens: None });
            },
            "perplexity (the reference model) goes with method perplexity",
        ),
    ] {
        let mut bad = dsir.clone();
        bad.status = None;
        change(&mut bad);
        World::default().pass(&mut bad, &lineage);
        let ready = condition(&bad, "Ready");
        assert_eq!(ready.reason, "InvalidSpec", "{message}");
        assert!(ready.message.contains(message), "{}", ready.message);
    }
}

#[test]
fn a_failed_group_does_not_stop_the_other_groups() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    world.pass(&mut fr, &lineage);
    world.fail(&fr, "score/code", "error: StudentError: student artefact s3://x: corrupt");
    world.succeed(&fr, "score/prose");
    let actions = world.pass(&mut fr, &lineage);
    assert_eq!(created(&actions), ["threshold/prose"]);
    assert_eq!(condition(&fr, "Scored").reason, "StudentError");
    assert_eq!(condition(&fr, "Ready").message, "stage score/code failed: student artefact s3://x: corrupt");
}

#[test]
fn a_finished_filter_run_reports_kept_tokens_per_group_and_in_total() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    run_to_completion(&mut world, &mut fr, &lineage);
    let status = fr.status.unwrap();
    assert!(status.pipeline.ready_at(Some(1)));
    assert_eq!(status.total.as_ref().unwrap().kept_tokens, 1020);
    assert_eq!(status.kept_share.as_deref(), Some("51.0% of 2.0k tokens"), "the Kept column");
    assert_eq!(status.groups[1].kept.as_ref().unwrap().kept_records, 5);
    assert!(status.groups[1].output.as_deref().unwrap().starts_with("s3://bucket/kept/prose/"));
    assert_eq!(status.pipeline.stages.len(), 6);
    let highlights = FilterRun::highlights(&status);
    assert_eq!(highlights.last().map(String::as_str), Some("total: kept 1020 of 2000 tokens (10 of 20 records)"));
    assert!(
        highlights[0].starts_with("group code: kept 510 of 1000 tokens (5 of 10 records) in s3://bucket/kept/code/")
    );
    assert!(highlights[0].ends_with("; 110 of those tokens by a draw among tied scores"), "{}", highlights[0]);
    assert!(status.groups.iter().all(|g| g.drawn_tokens == Some(110)), "ranked 400, drawn 110 in each group");
}

#[test]
fn a_source_with_no_usable_record_fails_the_filter_run_unless_allowed() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    run_to_completion(&mut world, &mut fr, &lineage);
    // The prose group's one source read nothing usable (a text field that matches nothing).
    let score = record(&fr, "score/prose");
    let mut result: ScoreResult = serde_json::from_value(result_of(&score)).unwrap();
    let mut web = result.groups[0].clone();
    (web.source, web.records, web.skipped) = (Some("web".into()), 0, plan::SkipCounts::default());
    web.skipped.add_reason("missing_text", "s3://corpus/web/0.jsonl", 0);
    result.sources = vec![web];
    world.results.insert(score.output.clone(), Arc::new(StepResult::Score(result)));
    world.pass(&mut fr, &lineage);
    let ready = condition(&fr, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoUsableRecords"));
    assert!(ready.message.contains("prose/web: scored 0 records") && ready.message.contains("allowUnusableSources"));
    assert_eq!(condition(&fr, "Usable").status, "False");

    fr.spec.allow_unusable_sources = true;
    fr.metadata.generation = Some(2);
    run_to_completion(&mut world, &mut fr, &lineage);
    assert_eq!(condition(&fr, "Ready").status, "True", "allowed: Ready, and still Usable=False");
    assert_eq!(condition(&fr, "Usable").status, "False");
}

#[test]
fn group_retention_for_an_unknown_group_is_an_invalid_spec() {
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    fr.spec.group_retention = BTreeMap::from([("math".to_string(), 0.8)]);
    assert!(world.pass(&mut fr, &full_lineage()).is_empty());
    let ready = condition(&fr, "Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(ready.message.contains("\"math\""), "{}", ready.message);
}

#[test]
fn wanted_results_are_the_outputs_of_stages_that_can_be_planned() {
    let lineage = full_lineage();
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    world.pass(&mut fr, &lineage);
    let input = |world: &World, fr: &FilterRun| {
        wanted_results(&Input {
            resource: fr,
            lineage: &lineage,
            jobs: &world.jobs,
            results: &world.results,
            progress: &world.progress,
            policy: &world.policy,
        })
    };
    let scores: Vec<(String, Step)> =
        ["score/code", "score/prose"].iter().map(|s| (record(&fr, s).output, Step::Score)).collect();
    assert_eq!(input(&world, &fr), scores);
    world.succeed(&fr, "score/code");
    assert_eq!(input(&world, &fr).len(), 3, "a finished score makes its threshold plannable");
}

/// Runs every stage to success.
fn run_to_completion<K: Pipeline>(world: &mut World, resource: &mut K, lineage: &Lineage) {
    for _ in 0..10 {
        world.pass(resource, lineage);
        let running: Vec<String> =
            stages(resource).into_iter().filter(|r| r.phase != StagePhase::Succeeded).map(|r| r.name).collect();
        if running.is_empty() && resource.status().unwrap().pipeline().ready_at(resource.meta().generation) {
            return;
        }
        for stage in running {
            world.succeed(resource, &stage);
        }
    }
    panic!("{} did not finish", resource.name_any());
}

/// Every plan of a whole chain, as a Job receives it, parses with the runner's own parser into
/// the plan the operator built: no field is lost, renamed or defaulted differently on the way.
#[test]
fn every_steps_plan_reaches_the_runner_as_the_operator_built_it() {
    let mut world = World::default();
    let mut seen = BTreeSet::new();
    let mut check = |actions: Vec<Action>| {
        for action in actions {
            if let Action::CreatePlanConfigMap { step, plan, .. } = action {
                let parsed =
                    StepPlan::parse(step, plan.as_bytes()).unwrap_or_else(|e| panic!("{step:?} plan: {e}\n{plan}"));
                assert_eq!(parsed.step(), step);
                let again: Value = serde_json::to_value(&parsed).unwrap();
                assert_eq!(again, serde_json::from_str::<Value>(&plan).unwrap(), "{step:?} plan changed on its way");
                // The rubrics (anchors with their guides) go by reference to the discover result,
                // with the digest the RubricSet's status recorded; no dimension is inline.
                let (rubrics, inline) = match &parsed {
                    StepPlan::Label(p) => (p.rubrics.as_ref(), p.groups.iter().map(|g| g.dimensions.len()).sum()),
                    StepPlan::Distill(p) => (p.rubrics.as_ref(), p.groups.iter().map(|g| g.dimensions.len()).sum()),
                    _ => (None, 0),
                };
                if matches!(step, Step::Label | Step::Distill) {
                    let status = ready_rubric_set().status.unwrap();
                    let rubrics = rubrics.expect("rubrics by reference");
                    assert_eq!(
                        (&rubrics.discovered, Some(&rubrics.sha256)),
                        (&status.discovered, status.digest.as_ref())
                    );
                    assert_eq!(inline, 0usize, "{step:?}");
                }
                // The teacher's cut reaches discovery, the labels and a judge student.
                let max_record_tokens = match &parsed {
                    StepPlan::Discover(p) => Some(p.pass.max_record_tokens),
                    StepPlan::Label(p) => Some(p.pass.max_record_tokens),
                    StepPlan::Distill(p) => Some(p.max_record_tokens),
                    _ => None,
                };
                assert!(max_record_tokens.is_none_or(|n| n == 777), "{step:?}: {max_record_tokens:?}");
                seen.insert(step);
            }
        }
    };
    let mut sg = source_group();
    check(world.pass(&mut sg, &Lineage::default()));
    let mut rs = rubric_set();
    let lineage = Lineage { source_group: Some(ready_source_group()), ..Default::default() };
    check(world.pass(&mut rs, &lineage));
    let mut dj = distillation_job();
    let lineage = Lineage { rubric_set: Some(ready_rubric_set()), ..lineage };
    check(world.pass(&mut dj, &lineage));
    world.succeed(&dj, "label");
    check(world.pass(&mut dj, &lineage));
    let mut fr = filter_run(CutPolicy::Group);
    let lineage = full_lineage();
    check(world.pass(&mut fr, &lineage));
    world.succeed(&fr, "score/code");
    check(world.pass(&mut fr, &lineage));
    world.succeed(&fr, "threshold/code");
    check(world.pass(&mut fr, &lineage));
    assert_eq!(seen.len(), 7, "every step planned once at least: {seen:?}");
}

/// `grouping.featurizer` reaches the cluster plan: sources can be grouped by an embedding
/// model's vectors, not only by hashed words.
#[test]
fn the_grouping_featurizer_reaches_the_cluster_plan() {
    let mut world = World::default();
    let mut sg = source_group();
    let model = LocalModel { uri: "s3://models/embedder/".into(), gguf_files: Vec::new(), max_num_seqs: None };
    sg.spec.grouping.featurizer.embedding = Some(EmbeddingFeaturizer { model });
    let actions = world.pass(&mut sg, &Lineage::default());
    let Some(Action::CreatePlanConfigMap { plan, .. }) =
        actions.iter().find(|a| matches!(a, Action::CreatePlanConfigMap { .. }))
    else {
        panic!("no cluster plan: {actions:?}")
    };
    let plan: plan::ClusterPlan = serde_json::from_str(plan).unwrap();
    let plan::FeaturizerSpec::Embedding { model: plan::ModelSpec::Local { uri, .. } } = plan.featurizer else {
        panic!("{:?}", plan.featurizer)
    };
    assert_eq!(uri, "s3://models/embedder/");
}

#[test]
fn a_source_with_every_dimension_masked_makes_the_distillation_job_unreliable() {
    let (mut world, mut dj) = (World::default(), distillation_job());
    dj.spec.labels.import_uri = Some("s3://bucket/labels/".into());
    let lineage = full_lineage();
    world.pass(&mut dj, &lineage);
    assert!(DistillationJob::findings(dj.status.as_ref().unwrap()).is_empty(), "no finding before students exist");
    let distilled = |books_signal_masked: bool| {
        let agreement = vec![
            agreement("web", "signal", false),
            agreement("web", "noise", true),
            agreement("books", "signal", books_signal_masked),
            agreement("books", "noise", true),
        ];
        let masked = agreement.iter().filter(|a| a.masked).fold(BTreeMap::new(), |mut m, a| {
            m.entry(a.source.clone()).or_insert_with(Vec::new).push(a.dimension.clone());
            m
        });
        serde_json::to_value(DistillResult {
            students: vec![StudentReport {
                group: "prose".into(),
                student: "s".into(),
                train_records: 70,
                validation_records: 30,
                lambdas: BTreeMap::new(),
                agreement,
                masked,
            }],
            sft: None,
            skipped_labels: Default::default(),
        })
        .unwrap()
    };
    world.succeed_with(&dj, "distill", distilled(true));
    world.pass(&mut dj, &lineage);
    let status = dj.status.clone().unwrap();
    assert_eq!(status.unranked, ["prose/books"]);
    assert_eq!(status.masked_share.as_deref(), Some("75% (3 of 4)"));
    assert_eq!(status.agreement, Some(format!("{}/_result.json", record(&dj, "distill").output)), "the full table");
    let [finding] = <[_; 1]>::try_from(DistillationJob::findings(&status)).unwrap();
    assert_eq!((finding.type_, finding.status, finding.reason.as_str()), ("Reliable", false, "NoReliableDimension"));
    assert!(finding.message.contains("prose/books") && !finding.message.contains("prose/web"), "{}", finding.message);
    assert_eq!(
        DistillationJob::highlights(&status),
        ["group prose: scores by signal; masked noise (books, web), signal (books)"]
    );

    let (mut world, mut dj) = (World::default(), {
        let mut d = distillation_job();
        d.spec.labels.import_uri = Some("s3://bucket/labels/".into());
        d
    });
    world.pass(&mut dj, &lineage);
    world.succeed_with(&dj, "distill", distilled(false));
    world.pass(&mut dj, &lineage);
    let status = dj.status.clone().unwrap();
    assert!(status.unranked.is_empty());
    assert!(DistillationJob::findings(&status)[0].status, "one reliable dimension per source suffices");
}

#[test]
fn a_source_that_gives_no_usable_record_makes_the_filter_run_unusable() {
    let source = |name: &str, records: u64, skipped: &[(&str, u64)]| SourceScored {
        name: name.into(),
        records,
        skipped: skipped.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
    };
    let group = |sources: Vec<SourceScored>| FilterGroupStatus {
        name: "prose".into(),
        scored_shards: None,
        records: Some(sources.iter().map(|s| s.records).sum()),
        tokens: None,
        skipped_records: None,
        cuts: Vec::new(),
        sources,
        lengths: Vec::new(),
        kept: None,
        drawn_tokens: None,
        output: None,
        unusable_sources: None,
    };
    let mut status = FilterRunStatus::default();
    assert!(FilterRun::findings(&status).is_empty(), "no finding before sources are scored");
    status.groups =
        vec![group(vec![source("web", 0, &[("missing_text", 120)]), source("code", 100, &[("invalid_json", 2)])])];
    let [finding, tokens] = <[_; 2]>::try_from(FilterRun::findings(&status)).unwrap();
    assert_eq!((finding.type_, finding.status, finding.reason.as_str()), ("Usable", false, "NoUsableRecords"));
    // No tokenizer named: the budgets count words, and a condition says so.
    assert_eq!((tokens.type_, tokens.status, tokens.reason.as_str()), ("Tokens", false, "WhitespaceWords"));
    assert!(
        finding.message.contains("prose/web: scored 0 records, skipped 120 (missing_text 120)"),
        "{}",
        finding.message
    );
    assert!(!finding.message.contains("prose/code"), "{}", finding.message);
    assert!(FilterRun::highlights(&status)
        .iter()
        .any(|l| l == "source code: scored 100 records, skipped 2 (invalid_json 2)"));
    status.groups[0].sources[0] = source("web", 60, &[("missing_text", 60)]);
    assert!(FilterRun::findings(&status)[0].status, "skipping no more than it scores is usable");
    status.token_counter = Some("s3://models/qwen3/tokenizer.json".into());
    let tokens = &FilterRun::findings(&status)[1];
    assert_eq!((tokens.status, tokens.reason.as_str()), (true, "Tokenizer"));
    assert!(tokens.message.ends_with("s3://models/qwen3/tokenizer.json"), "{}", tokens.message);
}

#[test]
fn a_filter_run_stops_before_scoring_sources_no_dimension_ranks_unless_told_to_keep_them_at_random() {
    let mut lineage = full_lineage();
    lineage.distillation_job.as_mut().unwrap().status.as_mut().unwrap().unranked = vec!["prose/web".into()];
    let (mut world, mut fr) = (World::default(), filter_run(CutPolicy::Group));
    let actions = world.pass(&mut fr, &lineage);
    assert!(created(&actions).is_empty(), "nothing is scored: {actions:?}");
    let ready = condition(&fr, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoReliableDimension"));
    assert!(ready.message.contains("prose/web") && ready.message.contains("KeepAtRandom"), "{}", ready.message);

    fr.spec.on_no_reliable_dimension = NoReliableDimension::KeepAtRandom;
    fr.metadata.generation = Some(2);
    assert_eq!(created(&world.pass(&mut fr, &lineage)), ["score/code", "score/prose"]);
}

#[test]
fn a_filter_run_lists_per_source_figures_for_the_sources_that_most_need_a_look_only() {
    let group = |g: usize| FilterGroupStatus {
        name: format!("g{g}"),
        scored_shards: None,
        records: Some(1000),
        tokens: None,
        skipped_records: None,
        cuts: (0..50)
            .map(|s| ScopedCut { scope: format!("g{g}/s{s}"), retention: 0.5, skipped_tokens: 0, cut: a_cut() })
            .collect(),
        sources: (0..50)
            .map(|s| SourceScored {
                name: format!("s{s}"),
                // Source 7 of group 1 gave nothing; the others skip s records in 100.
                records: if (g, s) == (1, 7) { 0 } else { 100 },
                skipped: BTreeMap::from([("invalid_json".to_string(), s as u64)]),
            })
            .collect(),
        lengths: (0..50)
            .map(|s| plan::SourceLength {
                group: format!("g{g}"),
                source: format!("s{s}"),
                sampled: 100,
                rank_correlation: Some(if (g, s) == (0, 3) { -0.9 } else { 0.001 * s as f64 }),
                deciles: Vec::new(),
            })
            .collect(),
        kept: None,
        drawn_tokens: None,
        output: None,
        unusable_sources: None,
    };
    let mut groups = vec![group(0), group(1)];
    filter_run::keep_listed_sources(&mut groups);
    let sources: Vec<String> =
        groups.iter().flat_map(|g| g.sources.iter().map(move |s| format!("{}/{}", g.name, s.name))).collect();
    let lengths: Vec<String> =
        groups.iter().flat_map(|g| g.lengths.iter().map(|l| format!("{}/{}", l.group, l.source))).collect();
    assert!(sources.len() <= 32 && lengths.len() <= 32, "{} sources, {} lengths", sources.len(), lengths.len());
    assert!(sources.contains(&"g1/s7".to_string()), "the source with no usable record: {sources:?}");
    assert!(sources.contains(&"g0/s49".to_string()), "the largest skip share: {sources:?}");
    assert!(!sources.contains(&"g0/s1".to_string()), "a source that skipped 1 in 100 is not listed: {sources:?}");
    assert!(lengths.contains(&"g0/s3".to_string()), "the strongest length correlation, negative: {lengths:?}");
    let cuts: Vec<&str> = groups.iter().flat_map(|g| g.cuts.iter().map(|c| c.scope.as_str())).collect();
    assert!(cuts.contains(&"g1/s7") && cuts.contains(&"g0/s3") && cuts.len() <= 64, "{cuts:?}");
}

#[test]
fn unusable_sources_past_those_the_status_lists_are_counted_in_the_message() {
    let group = FilterGroupStatus {
        name: "g".into(),
        records: Some(0),
        sources: (0..20)
            .map(|s| SourceScored { name: format!("s{s:02}"), records: 0, skipped: BTreeMap::new() })
            .collect(),
        ..Default::default()
    };
    let mut groups = vec![group];
    filter_run::keep_listed_sources(&mut groups);
    assert_eq!((groups[0].sources.len(), groups[0].unusable_sources), (16, Some(20)));
    let status = FilterRunStatus { groups, ..Default::default() };
    let message = filter_run::unusable(&status).unwrap();
    assert!(
        message.contains("g/s00: scored 0 records")
            && message.ends_with("; and 4 more (every source's figures are in the score results and the run report)"),
        "{message}"
    );
}

fn a_cut() -> Cut {
    Cut {
        bin: 5,
        threshold: 3.0,
        total_tokens: 1000,
        target_tokens: 500,
        kept_tokens: 500,
        kept_records: 5,
        total_records: 10,
        error_bound_tokens: 20,
        tie: None,
    }
}
