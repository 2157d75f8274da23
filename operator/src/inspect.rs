//! `mira status <kind>/<name>` (also `kubectl mira status`, with the binary installed as
//! `kubectl-mira`): a resource's whole chain on a cluster, upstream and downstream, each with
//! its conditions, stages, progress and last error, as `mira run` prints them at its end.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::{DistillationJob, FilterRun, RubricSet, SourceGroup};
use crate::describe::describe;
use crate::kube as cluster;
use crate::reconcile::{Pipeline, UpstreamRef};
use crate::report;
use crate::{Error, Result};

/// The kinds, upstream first, by the names kubectl accepts for them (kind, plural, short name).
const KINDS: [(&str, &[&str]); 4] = [
    ("SourceGroup", &["sourcegroup", "sourcegroups", "sg"]),
    ("RubricSet", &["rubricset", "rubricsets", "rbs"]),
    ("DistillationJob", &["distillationjob", "distillationjobs", "dj"]),
    ("FilterRun", &["filterrun", "filterruns", "fr"]),
];

/// A resource of the chain: its kind and name.
type Key = (&'static str, String);

/// `fr/half`, `filterrun/half`, `filterruns.mira.dev/half`: the kind and the name.
pub fn parse_target(target: &str) -> Result<Key> {
    let usage = || Error::InvalidArgument(format!("{target:?}: expected <kind>/<name>, for example fr/half"));
    let (kind, name) = target.split_once('/').ok_or_else(usage)?;
    let kind = kind.to_ascii_lowercase();
    let kind = kind.strip_suffix(".mira.dev").unwrap_or(&kind);
    let (kind, _) = KINDS.iter().find(|(_, names)| names.contains(&kind)).ok_or_else(usage)?;
    if name.is_empty() {
        return Err(usage());
    }
    Ok((kind, name.to_string()))
}

/// The name in `fr/<name>`: reports are of FilterRuns.
pub fn filter_run_name(target: &str) -> Result<String> {
    match parse_target(target)? {
        ("FilterRun", name) => Ok(name),
        _ => Err(Error::InvalidArgument(format!("{target:?}: a report is of a FilterRun, fr/<name>"))),
    }
}

/// Prints the chain of `target` in `namespace` (the kubeconfig's by default).
pub async fn status(target: &str, namespace: Option<String>) -> Result<()> {
    let target = parse_target(target)?;
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let chain = Chain {
        source_groups: list(&client, &namespace).await?,
        rubric_sets: list(&client, &namespace).await?,
        distillation_jobs: list(&client, &namespace).await?,
        filter_runs: list(&client, &namespace).await?,
    };
    let keep = chain.related(&target);
    if !keep.contains(&target) {
        return Err(Error::InvalidArgument(format!("{} {}/{} does not exist", target.0, namespace, target.1)));
    }
    let mut lines = Vec::new();
    print(&chain.source_groups, &keep, &mut lines);
    print(&chain.rubric_sets, &keep, &mut lines);
    print(&chain.distillation_jobs, &keep, &mut lines);
    print(&chain.filter_runs, &keep, &mut lines);
    println!("{}", lines.join("\n"));
    Ok(())
}

/// `mira report fr/<name>` on the cluster: the FilterRun's report, from the chain's statuses and
/// the stage results they point to, read with this machine's storage credentials (the standard
/// AWS chain: environment, profile, ...). Written to `out`, by default `<name>-report.html`
/// here; returns its path.
pub async fn report(target: &str, namespace: Option<String>, out: Option<PathBuf>) -> Result<String> {
    let name = filter_run_name(target)?;
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let filter_run: FilterRun = cluster::get(&client, &namespace, &name)
        .await?
        .ok_or_else(|| Error::InvalidArgument(format!("FilterRun {namespace}/{name} does not exist")))?;
    let lineage = cluster::fetch_lineage(&client, &namespace, filter_run.upstream_ref()).await?;
    let peers = cluster::filter_runs_with_lineage(&client, &namespace).await?;
    let uri = out.unwrap_or_else(|| PathBuf::from(format!("{name}-report.html"))).display().to_string();
    report::write(filter_run, lineage, &peers, &uri).await?;
    Ok(uri)
}

async fn list<K: Pipeline>(client: &Client, namespace: &str) -> Result<Vec<K>> {
    let objects = Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::GetObject { object: format!("{}s in {namespace}", K::kind(&())), source })?;
    Ok(objects.items)
}

fn print<K: Pipeline>(objects: &[K], keep: &BTreeSet<Key>, lines: &mut Vec<String>) {
    for object in objects.iter().filter(|o| keep.contains(&key(*o))) {
        lines.extend(describe(object));
    }
}

fn key<K: Pipeline>(object: &K) -> Key {
    let kind = KINDS.iter().map(|(k, _)| *k).find(|k| *k == K::kind(&())).expect("a MIRA kind");
    (kind, object.name_any())
}

fn upstream_key(reference: UpstreamRef) -> Key {
    match reference {
        UpstreamRef::SourceGroup(name) => ("SourceGroup", name),
        UpstreamRef::RubricSet(name) => ("RubricSet", name),
        UpstreamRef::DistillationJob(name) => ("DistillationJob", name),
    }
}

/// Every MIRA resource of a namespace.
struct Chain {
    source_groups: Vec<SourceGroup>,
    rubric_sets: Vec<RubricSet>,
    distillation_jobs: Vec<DistillationJob>,
    filter_runs: Vec<FilterRun>,
}

impl Chain {
    /// Each resource with the resource it reads from.
    fn links(&self) -> Vec<(Key, Option<Key>)> {
        fn of<K: Pipeline>(objects: &[K]) -> impl Iterator<Item = (Key, Option<Key>)> + '_ {
            objects.iter().map(|o| (key(o), o.upstream_ref().map(upstream_key)))
        }
        of(&self.source_groups)
            .chain(of(&self.rubric_sets))
            .chain(of(&self.distillation_jobs))
            .chain(of(&self.filter_runs))
            .collect()
    }

    /// `target` (if it exists), everything upstream of it, and everything downstream.
    fn related(&self, target: &Key) -> BTreeSet<Key> {
        let links = self.links();
        let mut keep = BTreeSet::new();
        let mut up = Some(target.clone());
        while let Some(key) = up.take() {
            let Some((_, next)) = links.iter().find(|(k, _)| *k == key) else { break };
            up = next.clone();
            keep.insert(key);
        }
        let mut below = BTreeSet::from([target.clone()]);
        // Each round adds the next kind down: at most three rounds.
        loop {
            let more: Vec<Key> = links
                .iter()
                .filter(|(k, up)| !below.contains(k) && up.as_ref().is_some_and(|u| below.contains(u)))
                .map(|(k, _)| k.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            below.extend(more);
        }
        below.remove(target);
        keep.extend(below);
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_named_as_kubectl_names_them() {
        for target in ["fr/half", "FilterRun/half", "filterruns/half", "filterruns.mira.dev/half"] {
            assert_eq!(parse_target(target).unwrap(), ("FilterRun", "half".to_string()), "{target}");
        }
        assert_eq!(parse_target("rbs/r").unwrap().0, "RubricSet");
        for bad in ["half", "deploy/half", "fr/"] {
            assert!(matches!(parse_target(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }
}
