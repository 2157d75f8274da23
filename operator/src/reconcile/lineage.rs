//! A resource's upstream chain, and the gate: a resource starts only when every resource above
//! it is Ready at its current generation and has caught up with its own upstream.

use kube::ResourceExt;

use super::{KindStatus, Pipeline};
use crate::api::{DistillationJob, PipelineStatus, RubricSet, SourceGroup};

/// The upstream objects of a resource, as an adapter found them (absent: not found).
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    pub source_group: Option<SourceGroup>,
    pub rubric_set: Option<RubricSet>,
    pub distillation_job: Option<DistillationJob>,
}

/// A reference to an upstream resource, in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamRef {
    SourceGroup(String),
    RubricSet(String),
    DistillationJob(String),
}

/// A fetched upstream object.
// Held one at a time while a reconcile walks up its chain: boxing would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Upstream {
    SourceGroup(SourceGroup),
    RubricSet(RubricSet),
    DistillationJob(DistillationJob),
}

impl Lineage {
    /// Adds a fetched upstream object; returns the reference to fetch next, up the chain (each
    /// kind's [`Pipeline::upstream_ref`]).
    pub fn insert(&mut self, object: Upstream) -> Option<UpstreamRef> {
        fn keep<K: Pipeline>(slot: &mut Option<K>, object: K) -> Option<UpstreamRef> {
            slot.insert(object).upstream_ref()
        }
        match object {
            Upstream::SourceGroup(o) => keep(&mut self.source_group, o),
            Upstream::RubricSet(o) => keep(&mut self.rubric_set, o),
            Upstream::DistillationJob(o) => keep(&mut self.distillation_job, o),
        }
    }

    /// The chain from `first` up to the root, nearest first; it ends at the first missing object.
    pub fn chain(&self, first: Option<UpstreamRef>) -> Vec<Link<'_>> {
        let mut links = Vec::new();
        let mut next = first;
        while let Some(reference) = next.take() {
            let (link, above) = match &reference {
                UpstreamRef::SourceGroup(name) => Link::to(self.source_group.as_ref(), name),
                UpstreamRef::RubricSet(name) => Link::to(self.rubric_set.as_ref(), name),
                UpstreamRef::DistillationJob(name) => Link::to(self.distillation_job.as_ref(), name),
            };
            links.push(link);
            next = above;
        }
        links
    }
}

/// One upstream resource, as the gate sees it.
#[derive(Clone, Debug)]
pub struct Link<'a> {
    pub kind: String,
    pub name: String,
    /// `metadata.generation` and status; `None` when the object was not found.
    pub found: Option<(Option<i64>, Option<&'a PipelineStatus>)>,
}

impl<'a> Link<'a> {
    /// The link to the object named `name`, which `candidate` is when found, and the reference
    /// to the object above it.
    fn to<K: Pipeline>(candidate: Option<&'a K>, name: &str) -> (Self, Option<UpstreamRef>) {
        let found = candidate.filter(|o| o.name_any() == name);
        let link = Link {
            kind: K::kind(&()).into_owned(),
            name: name.to_string(),
            found: found.map(|o| (o.meta().generation, o.status().map(KindStatus::pipeline))),
        };
        (link, found.and_then(Pipeline::upstream_ref))
    }
}

/// Opens when the whole chain is usable, yielding the nearest upstream's revision (`None` for a
/// root). Otherwise says what the resource waits for, naming the upstream.
pub fn gate(chain: &[Link<'_>]) -> Result<Option<String>, String> {
    for (i, link) in chain.iter().enumerate() {
        let Some((generation, status)) = link.found else {
            return Err(format!("waiting for {} {}: not found", link.kind, link.name));
        };
        let status = status.filter(|s| s.ready_at(generation)).ok_or_else(|| {
            let why = status
                .and_then(|s| s.condition("Ready"))
                .map(|c| format!(" (Ready={}, {}: {})", c.status, c.reason, c.message))
                .unwrap_or_default();
            format!(
                "waiting for {} {} to be Ready at generation {}{why}",
                link.kind,
                link.name,
                generation.unwrap_or(0)
            )
        })?;
        if let Some(parent) = chain.get(i + 1) {
            let parent_revision = parent.found.and_then(|(_, s)| s).and_then(|s| s.revision.as_ref());
            if parent_revision.is_some() && status.upstream_revision.as_ref() != parent_revision {
                return Err(format!(
                    "waiting for {} {} to catch up with {} {}",
                    link.kind, link.name, parent.kind, parent.name
                ));
            }
        }
    }
    Ok(chain.first().and_then(|l| l.found).and_then(|(_, s)| s).and_then(|s| s.revision.clone()))
}
