//! Reading `mira run`'s manifests: multi-document YAML files holding the four kinds, with
//! relative paths resolved against the file's directory.

use std::path::{Path, PathBuf};

use kube::{CustomResourceExt, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Deserialize as _;
use serde::Serialize;

use crate::api::{DistillationJob, FilterRun, LocalModel, RubricSet, SourceGroup};
use crate::reconcile::{Lineage, Pipeline, Upstream, UpstreamRef};
use crate::{Error, Result};

/// Namespace of manifests that name none, as `kubectl` would use.
const DEFAULT_NAMESPACE: &str = "default";

/// The resources of a run, each kind in chain order of processing.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub source_groups: Vec<SourceGroup>,
    pub rubric_sets: Vec<RubricSet>,
    pub distillation_jobs: Vec<DistillationJob>,
    pub filter_runs: Vec<FilterRun>,
}

impl Resources {
    /// The upstream chain starting at `first`, among these resources.
    pub fn lineage(&self, namespace: &str, first: Option<UpstreamRef>) -> Lineage {
        let mut lineage = Lineage::default();
        let mut next = first;
        while let Some(reference) = next.take() {
            if let Some(found) = self.find(namespace, &reference) {
                next = lineage.insert(found);
            }
        }
        lineage
    }

    /// Every FilterRun with its lineage: the selections a run report compares its own with.
    pub fn filter_runs_with_lineage(&self) -> Vec<(FilterRun, Lineage)> {
        self.filter_runs
            .iter()
            .map(|f| (f.clone(), self.lineage(&f.namespace().unwrap_or_default(), f.upstream_ref())))
            .collect()
    }

    fn find(&self, namespace: &str, reference: &UpstreamRef) -> Option<Upstream> {
        fn named<'a, K: Resource>(objects: &'a [K], namespace: &str, name: &str) -> Option<&'a K> {
            objects
                .iter()
                .find(|o| o.meta().name.as_deref() == Some(name) && o.namespace().as_deref() == Some(namespace))
        }
        match reference {
            UpstreamRef::SourceGroup(name) => {
                named(&self.source_groups, namespace, name).cloned().map(Upstream::SourceGroup)
            }
            UpstreamRef::RubricSet(name) => named(&self.rubric_sets, namespace, name).cloned().map(Upstream::RubricSet),
            UpstreamRef::DistillationJob(name) => {
                named(&self.distillation_jobs, namespace, name).cloned().map(Upstream::DistillationJob)
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.source_groups.is_empty()
            && self.rubric_sets.is_empty()
            && self.distillation_jobs.is_empty()
            && self.filter_runs.is_empty()
    }
}

/// Loads a manifest file, or every `.yaml`/`.yml` file of a directory (not recursing); `path`
/// is absolute.
pub fn load(path: &Path) -> Result<Resources> {
    let unreadable =
        |path: &Path, e: std::io::Error| Error::Manifest { path: path.to_path_buf(), message: e.to_string() };
    let files = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| unreadable(path, e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut resources = Resources::default();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| unreadable(file, e))?;
        let base = file.parent().unwrap_or(file);
        parse(&text, base, &mut resources).map_err(|message| Error::Manifest { path: file.clone(), message })?;
    }
    if resources.is_empty() {
        return Err(Error::Manifest {
            path: path.to_path_buf(),
            message: "no MIRA resources (apiVersion mira.dev/v1alpha1)".into(),
        });
    }
    Ok(resources)
}

/// Adds the MIRA resources of one YAML stream; documents of other API groups are skipped.
fn parse(text: &str, base: &Path, resources: &mut Resources) -> Result<(), String> {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| format!("document {}: {e}", index + 1))?;
        if value.is_null() {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if !api_version.starts_with(&format!("{}/", crate::api::GROUP)) {
            continue;
        }
        let at = |e: String| format!("document {} ({kind}): {e}", index + 1);
        if api_version != SourceGroup::api_version(&()) {
            return Err(at(format!("unsupported apiVersion {api_version}")));
        }
        match kind.as_str() {
            "SourceGroup" => {
                let mut o: SourceGroup = object(value).map_err(at)?;
                resolve(base, &mut o.spec.root);
                o.spec.sources.iter_mut().for_each(|s| resolve(base, &mut s.uri));
                add(&mut resources.source_groups, o).map_err(at)?;
            }
            "RubricSet" => {
                let mut o: RubricSet = object(value).map_err(at)?;
                resolve_model(base, o.spec.teacher.local.as_mut());
                resolve_model(base, o.spec.discovery.embedder.as_mut().and_then(|m| m.local.as_mut()));
                add(&mut resources.rubric_sets, o).map_err(at)?;
            }
            "DistillationJob" => {
                let mut o: DistillationJob = object(value).map_err(at)?;
                o.spec.labels.import_uri.iter_mut().for_each(|u| resolve(base, u));
                resolve_model(base, o.spec.labels.teacher.as_mut().and_then(|m| m.local.as_mut()));
                let student = &mut o.spec.student;
                resolve_model(base, student.judge.as_mut().and_then(|m| m.local.as_mut()));
                resolve_model(base, student.featurizer.embedding.as_mut().map(|e| &mut e.model));
                add(&mut resources.distillation_jobs, o).map_err(at)?;
            }
            "FilterRun" => {
                let mut o: FilterRun = object(value).map_err(at)?;
                resolve(base, &mut o.spec.output);
                o.spec.tokens.tokenizer.iter_mut().for_each(|u| resolve(base, u));
                o.spec.dsir.iter_mut().for_each(|d| resolve(base, &mut d.target));
                resolve_model(base, o.spec.perplexity.as_mut().map(|p| &mut p.model));
                add(&mut resources.filter_runs, o).map_err(at)?;
            }
            other => return Err(at(format!("unknown kind {other:?}"))),
        }
    }
    Ok(())
}

fn object<K: DeserializeOwned + Serialize + CustomResourceExt + Resource>(
    value: serde_yaml::Value,
) -> Result<K, String> {
    let mut object: K = super::validate::object(value)?;
    let name = object.meta().name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    // As the API server checks them; anything else (`../x`) would also make state and output
    // paths that leave their roots.
    if name.len() > 253 || !name.split('.').all(|part| dns_part(part, usize::MAX)) {
        return Err(format!(
            "metadata.name {name:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and \
             ending with a letter or digit"
        ));
    }
    let namespace = object.meta_mut().namespace.get_or_insert_with(|| DEFAULT_NAMESPACE.into());
    if !dns_part(namespace, 63) {
        return Err(format!(
            "metadata.namespace {namespace:?} must be a DNS label: lowercase letters, digits and '-', at most 63"
        ));
    }
    Ok(object)
}

/// One RFC 1123 label of at most `max` characters: lowercase letters, digits and '-', starting
/// and ending with a letter or digit.
fn dns_part(part: &str, max: usize) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    part.len() <= max
        && edge(part.chars().next())
        && edge(part.chars().last())
        && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn add<K: Resource>(objects: &mut Vec<K>, object: K) -> Result<(), String> {
    if objects.iter().any(|o| o.meta().name == object.meta().name && o.meta().namespace == object.meta().namespace) {
        return Err(format!("{} is defined twice", object.meta().name.as_deref().unwrap_or_default()));
    }
    objects.push(object);
    Ok(())
}

/// A relative local path becomes absolute, against the manifest's directory; URIs with a
/// scheme and absolute paths stay as they are.
fn resolve(base: &Path, uri: &mut String) {
    if !uri.contains("://") && !Path::new(uri.as_str()).is_absolute() {
        *uri = base.join(uri.as_str()).to_string_lossy().into_owned();
    }
}

/// Every model a worker loads itself (`local`) goes through here.
fn resolve_model(base: &Path, model: Option<&mut LocalModel>) {
    if let Some(local) = model {
        resolve(base, &mut local.uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = r#"
apiVersion: mira.dev/v1alpha1
kind: SourceGroup
metadata: {name: corpus}
spec:
  root: out
  sources:
    - {name: web, uri: data/web/}
    - {name: code, uri: s3://bucket/code/}
---
apiVersion: v1
kind: Secret
metadata: {name: ignored}
---
apiVersion: mira.dev/v1alpha1
kind: FilterRun
metadata: {name: filter, namespace: team}
spec:
  distillationJobRef: students
  retention: 0.5
  output: /abs/kept
"#;

    #[test]
    fn documents_of_the_four_kinds_are_read_and_others_skipped() {
        let mut resources = Resources::default();
        parse(CHAIN, Path::new("/manifests"), &mut resources).unwrap();
        assert_eq!(resources.source_groups.len(), 1);
        assert_eq!(resources.filter_runs.len(), 1);
        assert_eq!(resources.source_groups[0].namespace().as_deref(), Some("default"));
        assert_eq!(resources.filter_runs[0].namespace().as_deref(), Some("team"));
    }

    #[test]
    fn relative_paths_resolve_against_the_manifest_directory() {
        let mut resources = Resources::default();
        parse(CHAIN, Path::new("/manifests"), &mut resources).unwrap();
        let sg = &resources.source_groups[0];
        assert_eq!(sg.spec.root, "/manifests/out");
        assert_eq!(sg.spec.sources[0].uri, "/manifests/data/web/");
        assert_eq!(sg.spec.sources[1].uri, "s3://bucket/code/");
        assert_eq!(resources.filter_runs[0].spec.output, "/abs/kept");

        let students = "apiVersion: mira.dev/v1alpha1\nkind: DistillationJob\nmetadata: {name: judged}\nspec:
  rubricSetRef: rubrics
  labels: {teacher: {local: {uri: models/teacher}}}
  student: {judge: {local: {uri: models/judge}}}
---
apiVersion: mira.dev/v1alpha1\nkind: DistillationJob\nmetadata: {name: embedded}\nspec:
  rubricSetRef: rubrics
  student: {featurizer: {embedding: {model: {uri: models/embed}}}}\n";
        parse(students, Path::new("/manifests"), &mut resources).unwrap();
        let [judged, embedded] = [0, 1].map(|i| &resources.distillation_jobs[i].spec);
        let uri = |m: Option<&crate::api::ModelSpec>| m.and_then(|m| m.local.as_ref()).map(|l| l.uri.clone());
        assert_eq!(uri(judged.labels.teacher.as_ref()).as_deref(), Some("/manifests/models/teacher"));
        assert_eq!(uri(judged.student.judge.as_ref()).as_deref(), Some("/manifests/models/judge"));
        let embedding = embedded.student.featurizer.embedding.as_ref().map(|e| e.model.uri.as_str());
        assert_eq!(embedding, Some("/manifests/models/embed"));

        let baselines = "apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {name: dsir}\nspec:
  sourceGroupRef: corpus\n  method: dsir\n  dsir: {target: data/reference/}\n  retention: 0.5\n  output: kept/dsir
---
apiVersion: mira.dev/v1alpha1\nkind: FilterRun\nmetadata: {name: ppl}\nspec:
  sourceGroupRef: corpus\n  method: perplexity\n  perplexity: {model: {uri: models/reference}}
  retention: 0.5\n  output: kept/ppl\n";
        parse(baselines, Path::new("/manifests"), &mut resources).unwrap();
        let [.., dsir, perplexity] = &resources.filter_runs[..] else { panic!("two FilterRuns") };
        assert_eq!(dsir.spec.dsir.as_ref().map(|d| d.target.as_str()), Some("/manifests/data/reference/"));
        let reference = perplexity.spec.perplexity.as_ref().map(|p| p.model.uri.as_str());
        assert_eq!(reference, Some("/manifests/models/reference"));
    }

    #[test]
    fn an_unknown_mira_kind_is_an_error() {
        let text = "apiVersion: mira.dev/v1alpha1\nkind: Corpus\nmetadata: {name: x}\n";
        let error = parse(text, Path::new("/m"), &mut Resources::default()).unwrap_err();
        assert!(error.contains("unknown kind \"Corpus\""), "{error}");
    }

    #[test]
    fn a_resource_defined_twice_is_an_error() {
        let text = "apiVersion: mira.dev/v1alpha1\nkind: SourceGroup\nmetadata: {name: a}\nspec: {root: r, sources: [{name: s, uri: u}]}\n";
        let error = parse(&format!("{text}---\n{text}"), Path::new("/m"), &mut Resources::default()).unwrap_err();
        assert!(error.contains("defined twice"), "{error}");
    }

    #[test]
    fn the_lineage_follows_references_within_a_namespace() {
        let mut resources = Resources::default();
        parse(CHAIN, Path::new("/m"), &mut resources).unwrap();
        let lineage = resources.lineage("default", Some(UpstreamRef::SourceGroup("corpus".into())));
        assert!(lineage.source_group.is_some());
        assert!(resources.lineage("team", Some(UpstreamRef::SourceGroup("corpus".into()))).source_group.is_none());
    }
}
