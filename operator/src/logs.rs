//! `mira logs <kind>/<name> --stage <step> [--group <g>]` (also `kubectl mira logs`): the logs of
//! the pods of the Job that runs, or ran, one stage of a resource, read through the API server
//! as `kubectl logs` reads them, so that a failed stage's workers can be read without looking up
//! its Job's generated name.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};

use crate::api::{DistillationJob, FilterRun, RubricSet, SourceGroup, StagePhase, StageRecord};
use crate::inspect::parse_target;
use crate::kube as cluster;
use crate::kube::RUNNER_CONTAINER;
use crate::reconcile::{KindStatus, Pipeline};
use crate::{Error, Result};

/// Prints the logs of every pod of the stage's Job, oldest first, each under a header line;
/// `tail` keeps each pod's last lines only. A pod whose log cannot be read (still creating, its
/// node gone) says why under its header, and the others are printed still; the call then fails.
pub async fn logs(
    target: &str,
    stage: &str,
    group: Option<&str>,
    namespace: Option<String>,
    tail: Option<i64>,
) -> Result<()> {
    let (kind, name) = parse_target(target)?;
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let stages = match kind {
        "SourceGroup" => stages::<SourceGroup>(&client, &namespace, &name).await?,
        "RubricSet" => stages::<RubricSet>(&client, &namespace, &name).await?,
        "DistillationJob" => stages::<DistillationJob>(&client, &namespace, &name).await?,
        _ => stages::<FilterRun>(&client, &namespace, &name).await?,
    };
    let record = pick(&stages, stage, group)
        .map_err(|why| Error::InvalidArgument(format!("{kind} {namespace}/{name}: {why}")))?;
    let job = record.job.as_deref().ok_or_else(|| {
        Error::InvalidArgument(match record.phase {
            StagePhase::Pending => format!("stage {} has no Job yet: it waits for the stages before it", record.name),
            _ => format!(
                "stage {} ran no Job: {}",
                record.name,
                record.message.as_deref().unwrap_or("an identical earlier run's result was reused")
            ),
        })
    })?;
    let pods_api = Api::<Pod>::namespaced(client, &namespace);
    let mut pods = pods_api
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .map_err(|source| Error::GetObject { object: format!("pods of Job {namespace}/{job}"), source })?
        .items;
    if pods.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "Job {namespace}/{job} of stage {} has no pods left: Kubernetes deletes a finished Job and its pods after \
             spec.job.ttlSecondsAfterFinished (one day by default)",
            record.name
        )));
    }
    pods.sort_by_key(|p| p.creation_timestamp().map(|t| t.0));
    let params = LogParams { container: Some(RUNNER_CONTAINER.into()), tail_lines: tail, ..Default::default() };
    let mut unread = None;
    for pod in &pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        println!("==> pod {} ({phase}), Job {job}, stage {} <==", pod.name_any(), record.name);
        match pods_api.logs(&pod.name_any(), &params).await {
            Ok(text) => {
                print!("{text}");
                if !text.is_empty() && !text.ends_with('\n') {
                    println!();
                }
            }
            Err(source) => {
                println!("(no log: {source})");
                unread =
                    Some(Error::GetObject { object: format!("the log of pod {namespace}/{}", pod.name_any()), source });
            }
        }
    }
    unread.map_or(Ok(()), Err)
}

async fn stages<K: Pipeline>(client: &Client, namespace: &str, name: &str) -> Result<Vec<StageRecord>> {
    let object: K = cluster::get(client, namespace, name)
        .await?
        .ok_or_else(|| Error::InvalidArgument(format!("{} {namespace}/{name} does not exist", K::kind(&()))))?;
    Ok(object.status().map(|s| s.pipeline().stages.clone()).unwrap_or_default())
}

/// The stage of `step` (and `group`); without a group, the step's only stage. The error lists
/// the stages there are.
fn pick<'a>(stages: &'a [StageRecord], step: &str, group: Option<&str>) -> Result<&'a StageRecord, String> {
    let of_step: Vec<&StageRecord> =
        stages.iter().filter(|s| s.step.as_str() == step && (group.is_none() || s.group.as_deref() == group)).collect();
    match of_step[..] {
        [only] => Ok(only),
        _ => {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            let wanted = match group {
                Some(group) => format!("no stage {step}/{group}"),
                None if of_step.is_empty() => format!("no stage {step}"),
                None => format!("{} stages of step {step}: name one with --group", of_step.len()),
            };
            Err(format!(
                "{wanted}; its stages: {}",
                if names.is_empty() { "none yet".into() } else { names.join(", ") }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{StagePhase, Step};

    fn record(step: Step, group: Option<&str>) -> StageRecord {
        StageRecord {
            name: crate::reconcile::stage_name(step, group),
            step,
            group: group.map(str::to_string),
            job: Some("job".into()),
            generation: 1,
            output: "out".into(),
            phase: StagePhase::Succeeded,
            reason: None,
            message: None,
            progress: None,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_stage_is_found_by_its_step_and_group_or_the_error_lists_the_stages() {
        let stages =
            [record(Step::Score, Some("code")), record(Step::Score, Some("web")), record(Step::Threshold, None)];
        assert_eq!(pick(&stages, "score", Some("web")).unwrap().name, "score/web");
        assert_eq!(pick(&stages, "threshold", None).unwrap().name, "threshold");
        let ambiguous = pick(&stages, "score", None).unwrap_err();
        assert!(ambiguous.starts_with("2 stages of step score: name one with --group;"), "{ambiguous}");
        let missing = pick(&stages, "score", Some("math")).unwrap_err();
        assert_eq!(missing, "no stage score/math; its stages: score/code, score/web, threshold");
        assert_eq!(pick(&[], "select", None).unwrap_err(), "no stage select; its stages: none yet");
    }
}
