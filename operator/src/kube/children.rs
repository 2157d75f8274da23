//! The children of a resource, built as plain values: a ConfigMap holding a stage's plan, the
//! stage's Job, and how an observed Job reads back as a [`JobState`].

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::Step;
use crate::reconcile::{JobRequest, JobState};
use crate::{Error, Result};

/// The one field manager of everything the operator writes.
pub const MANAGER: &str = "mira-operator";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_RESOURCE: &str = "mira.dev/resource";
pub const LABEL_STAGE: &str = "mira.dev/stage";
pub const LABEL_GROUP: &str = "mira.dev/group";
/// The label Kueue reads to queue a Job.
const LABEL_KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";
/// The label the Job controller puts on its Pods (present on every Kubernetes version).
pub const LABEL_JOB_NAME: &str = "job-name";

const PLAN_DIR: &str = "/etc/mira";
const PLAN_KEY: &str = "plan.json";
const SCRATCH: &str = "/scratch";
const DEFAULT_BACKOFF_LIMIT: i32 = 3;
const DEFAULT_TTL_SECONDS: i32 = 86_400;
const DEFAULT_SCRATCH_LIMIT: &str = "100Gi";
/// `/tmp` holds only small spills: the runner writes large files under the scratch volume.
const TMP_LIMIT: &str = "1Gi";
/// The workers' user and group (the one the runner images declare): never root, whatever image
/// a resource names.
const WORKER_UID: i64 = 65532;

/// The project's own labels on every child: never the resource's labels, which GitOps tools
/// would then claim and prune.
pub fn labels(resource: &str, step: Step, group: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_RESOURCE.to_string(), resource.to_string()),
        (LABEL_STAGE.to_string(), step.as_str().to_string()),
    ]);
    if let Some(group) = group {
        labels.insert(LABEL_GROUP.to_string(), group.to_string());
    }
    labels
}

fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// The ConfigMap holding a stage's plan; its Job mounts it.
pub fn plan_config_map(
    owner: &OwnerReference,
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    plan: &str,
) -> ConfigMap {
    ConfigMap {
        metadata: meta(name, namespace, labels, owner),
        data: Some(BTreeMap::from([(PLAN_KEY.to_string(), plan.to_string())])),
        ..Default::default()
    }
}

/// A stage's Job: `workers` pods running `scorer-runner <step> --plan /etc/mira/plan.json`. It
/// has no completion count, so it succeeds once any worker succeeds and all have stopped: the
/// workers share work units, so the first to find none left means the stage is done.
pub fn job(
    owner: &OwnerReference,
    namespace: &str,
    resource: &str,
    request: &JobRequest,
    default_image: Option<&str>,
) -> Result<Job> {
    let template = &request.template;
    let image = template.image.as_deref().or(default_image).ok_or_else(|| {
        Error::InvalidSpec("no image for the stage Jobs: set spec.job.image or the operator's --runner-image".into())
    })?;
    let pod_labels = labels(resource, request.step, request.group.as_deref());
    let mut job_labels = pod_labels.clone();
    if let Some(queue) = &template.queue {
        job_labels.insert(LABEL_KUEUE_QUEUE.into(), queue.clone());
    }
    let mut env = vec![
        EnvVar {
            name: "MIRA_WORKER_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar { name: "HF_HOME".into(), value: Some(format!("{SCRATCH}/hf")), ..Default::default() },
    ];
    env.extend(request.secrets.iter().map(|s| EnvVar {
        name: s.env.clone(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: s.secret.clone(), key: s.key.clone(), optional: None }),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let container = Container {
        name: super::RUNNER_CONTAINER.into(),
        image: Some(image.into()),
        args: Some(
            [request.step.as_str(), "--plan", &format!("{PLAN_DIR}/{PLAN_KEY}"), "--scratch", SCRATCH]
                .map(str::to_string)
                .to_vec(),
        ),
        env: Some(env),
        resources: resources(template.resources.as_ref()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "plan".into(),
                mount_path: PLAN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "scratch".into(), mount_path: SCRATCH.into(), ..Default::default() },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        // The last log lines (the runner's `error: <Category>: ...`) become the termination
        // message the operator copies into the stage condition.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let empty_dir = |name: &str, limit: Quantity| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(limit), ..Default::default() }),
        ..Default::default()
    };
    let scratch_limit = template.scratch_size_limit.clone().unwrap_or_else(|| Quantity(DEFAULT_SCRATCH_LIMIT.into()));
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "plan".into(),
                config_map: Some(ConfigMapVolumeSource { name: request.name.clone(), ..Default::default() }),
                ..Default::default()
            },
            empty_dir("scratch", scratch_limit),
            empty_dir("tmp", Quantity(TMP_LIMIT.into())),
        ]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            fs_group: Some(WORKER_UID),
            ..Default::default()
        }),
        // Workers talk to storage and models, never to the API server.
        automount_service_account_token: Some(false),
        service_account_name: template.service_account_name.clone(),
        priority_class_name: template.priority_class_name.clone(),
        node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
        tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
        ..Default::default()
    };
    Ok(Job {
        metadata: meta(&request.name, namespace, job_labels, owner),
        spec: Some(JobSpec {
            parallelism: Some(template.workers.unwrap_or(1)),
            backoff_limit: Some(template.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT)),
            active_deadline_seconds: template.active_deadline_seconds,
            ttl_seconds_after_finished: Some(template.ttl_seconds_after_finished.unwrap_or(DEFAULT_TTL_SECONDS)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// Requests for CPU and memory, a memory limit equal to its request, and GPUs as limits.
fn resources(spec: Option<&crate::api::ComputeResources>) -> Option<ResourceRequirements> {
    let spec = spec?;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &spec.cpu {
        requests.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &spec.memory {
        requests.insert("memory".to_string(), memory.clone());
        limits.insert("memory".to_string(), memory.clone());
    }
    if let Some(gpu) = spec.gpu.filter(|g| *g > 0) {
        limits.insert("nvidia.com/gpu".to_string(), Quantity(gpu.to_string()));
    }
    Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

/// How a Job reads for the engine. A failed Job's log is its Job condition's message until
/// [`failure_log`] finds the worker's own last words.
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let holds = |type_: &str| conditions.iter().find(|c| c.type_ == type_ && c.status == "True");
    if holds("Complete").is_some() {
        return JobState::Succeeded;
    }
    if let Some(failed) = holds("Failed") {
        return JobState::Failed {
            reason: failed.reason.clone().unwrap_or_else(|| "JobFailed".into()),
            log: failed.message.clone().unwrap_or_default(),
        };
    }
    // `ready` counts running workers; servers too old to report it count `active` instead.
    match status.ready.or(status.active) {
        Some(n) if n > 0 => JobState::Running,
        _ => JobState::Pending,
    }
}

/// The termination message (log tail) of the worker that failed last.
pub fn failure_log(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code != 0 && t.message.as_deref().is_some_and(|m| !m.trim().is_empty()))
        .max_by_key(|t| t.finished_at.clone())
        .and_then(|t| t.message.clone())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};

    use super::*;
    use crate::api::{ComputeResources, JobTemplate};
    use crate::reconcile::SecretEnv;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "mira.dev/v1alpha1".into(),
            kind: "FilterRun".into(),
            name: "filter".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn request(template: JobTemplate) -> JobRequest {
        JobRequest {
            name: "filter-score-code-g1-abcd1234".into(),
            stage: "score/code".into(),
            step: Step::Score,
            group: Some("code".into()),
            template,
            secrets: vec![SecretEnv {
                env: "AWS_ACCESS_KEY_ID".into(),
                secret: "s3".into(),
                key: "AWS_ACCESS_KEY_ID".into(),
            }],
        }
    }

    #[test]
    fn a_job_carries_only_the_projects_labels_and_a_controller_owner() {
        let job = job(&owner(), "ns", "filter", &request(JobTemplate::default()), Some("mira/scorer:1")).unwrap();
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels.len(), 4);
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGER);
        assert_eq!(labels[LABEL_RESOURCE], "filter");
        assert_eq!(labels[LABEL_STAGE], "score");
        assert_eq!(labels[LABEL_GROUP], "code");
        assert_eq!(job.metadata.owner_references.unwrap()[0].controller, Some(true));
    }

    #[test]
    fn a_job_runs_the_step_on_its_mounted_plan_with_secrets_from_env() {
        let job = job(&owner(), "ns", "filter", &request(JobTemplate::default()), Some("mira/scorer:1")).unwrap();
        let spec = job.spec.unwrap();
        assert_eq!(spec.completions, None);
        assert_eq!(spec.parallelism, Some(1));
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().unwrap()[..3], ["score", "--plan", "/etc/mira/plan.json"]);
        assert_eq!(container.image.as_deref(), Some("mira/scorer:1"));
        assert_eq!(container.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        let env = container.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "AWS_ACCESS_KEY_ID"
            && e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name == "s3"));
        assert_eq!(pod.volumes.unwrap()[0].config_map.as_ref().unwrap().name, "filter-score-code-g1-abcd1234");
    }

    #[test]
    fn workers_run_as_non_root_without_an_api_token_on_bounded_scratch() {
        let pod = |template: JobTemplate| {
            let job = job(&owner(), "ns", "filter", &request(template), Some("default:1")).unwrap();
            job.spec.unwrap().template.spec.unwrap()
        };
        let default = pod(JobTemplate::default());
        let security = default.security_context.clone().unwrap();
        assert_eq!((security.run_as_non_root, security.run_as_user), (Some(true), Some(WORKER_UID)));
        assert_eq!(default.automount_service_account_token, Some(false));
        let limit = |pod: &PodSpec, name: &str| {
            let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == name).unwrap();
            volume.empty_dir.as_ref().unwrap().size_limit.clone().unwrap().0
        };
        assert_eq!((limit(&default, "scratch"), limit(&default, "tmp")), ("100Gi".into(), "1Gi".into()));
        let large = pod(JobTemplate { scratch_size_limit: Some(Quantity("400Gi".into())), ..Default::default() });
        assert_eq!(limit(&large, "scratch"), "400Gi");
    }

    #[test]
    fn the_template_sets_workers_resources_gpus_and_the_kueue_queue() {
        let template = JobTemplate {
            image: Some("own:2".into()),
            workers: Some(8),
            resources: Some(ComputeResources {
                cpu: Some(Quantity("4".into())),
                memory: Some(Quantity("16Gi".into())),
                gpu: Some(1),
            }),
            queue: Some("gpu-queue".into()),
            ttl_seconds_after_finished: Some(60),
            ..Default::default()
        };
        let job = job(&owner(), "ns", "filter", &request(template), Some("default:1")).unwrap();
        assert_eq!(job.metadata.labels.as_ref().unwrap()[LABEL_KUEUE_QUEUE], "gpu-queue");
        let spec = job.spec.unwrap();
        assert_eq!((spec.parallelism, spec.ttl_seconds_after_finished), (Some(8), Some(60)));
        let pod = spec.template.spec.unwrap();
        assert!(!spec.template.metadata.unwrap().labels.unwrap().contains_key(LABEL_KUEUE_QUEUE));
        let resources = pod.containers[0].resources.clone().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["nvidia.com/gpu"], Quantity("1".into()));
        assert_eq!(resources.limits.unwrap()["memory"], Quantity("16Gi".into()));
        assert_eq!(resources.requests.unwrap()["cpu"], Quantity("4".into()));
        assert_eq!(pod.containers[0].image.as_deref(), Some("own:2"));
    }

    #[test]
    fn a_job_without_any_image_is_an_invalid_spec() {
        assert!(matches!(
            job(&owner(), "ns", "filter", &request(JobTemplate::default()), None),
            Err(Error::InvalidSpec(_))
        ));
    }

    fn with_status(status: JobStatus) -> Job {
        Job { status: Some(status), ..Default::default() }
    }

    fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
        JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        }
    }

    #[test]
    fn job_states_follow_conditions_then_running_workers() {
        assert_eq!(job_state(&Job::default()), JobState::Pending);
        assert_eq!(job_state(&with_status(JobStatus { active: Some(2), ..Default::default() })), JobState::Running);
        assert_eq!(
            job_state(&with_status(JobStatus { active: Some(2), ready: Some(0), ..Default::default() })),
            JobState::Pending
        );
        let complete = JobStatus { conditions: Some(vec![condition("Complete", "", "")]), ..Default::default() };
        assert_eq!(job_state(&with_status(complete)), JobState::Succeeded);
        let failed = JobStatus {
            conditions: Some(vec![condition(
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )]),
            ..Default::default()
        };
        assert_eq!(
            job_state(&with_status(failed)),
            JobState::Failed {
                reason: "BackoffLimitExceeded".into(),
                log: "Job has reached the specified backoff limit".into()
            }
        );
    }

    #[test]
    fn the_failure_log_is_the_last_failed_workers_termination_message() {
        let pod = |code: i32, message: &str, second: i64| Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            message: Some(message.into()),
                            finished_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods =
            [pod(1, "error: StorageError: first", 10), pod(1, "error: StorageError: last", 20), pod(0, "fine", 30)];
        assert_eq!(failure_log(&pods).as_deref(), Some("error: StorageError: last"));
        assert_eq!(failure_log(&[]), None);
    }
}
