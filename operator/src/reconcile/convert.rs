//! From spec types to the data plane's plan types, shared by the kinds' planners.

use kube::ResourceExt;
use scorer_runner::plan::StorageConfig;
use scorer_runner::plan::{self, Source};

use super::{names, Pipeline, SecretEnv};
use crate::api::{LocalModel, ModelSpec, SourceGroup, SourceSpec, StorageSpec};
use crate::{Error, Result};

/// Environment variables workers read S3 credentials from (the AWS standard chain).
const AWS_KEYS: [&str; 2] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];

impl StorageSpec {
    /// The data plane's storage settings; credentials come from the environment.
    pub fn config(&self) -> StorageConfig {
        StorageConfig {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            ..Default::default()
        }
    }
}

/// The credentials Secret's keys, as the workers' environment.
pub fn storage_secrets(spec: &StorageSpec) -> Vec<SecretEnv> {
    spec.credentials_secret
        .iter()
        .flat_map(|secret| AWS_KEYS.map(|key| SecretEnv { env: key.into(), secret: secret.clone(), key: key.into() }))
        .collect()
}

pub fn source(spec: &SourceSpec) -> Source {
    Source {
        name: spec.name.clone(),
        uri: spec.uri.clone(),
        format: spec.format,
        text: spec.text.clone().unwrap_or_default(),
        shard_fraction: spec.shard_fraction,
    }
}

/// The sources of one of a SourceGroup's groups, as its status lists them.
pub fn group_sources(sg: &SourceGroup, group: &str) -> Result<Vec<Source>> {
    let status =
        sg.status.as_ref().and_then(|s| s.groups.iter().find(|g| g.name == group)).ok_or_else(|| {
            Error::UpstreamIncomplete(format!("SourceGroup {} has no group {group:?}", sg.name_any()))
        })?;
    status
        .sources
        .iter()
        .map(|name| {
            sg.spec.sources.iter().find(|s| &s.name == name).map(source).ok_or_else(|| {
                Error::UpstreamIncomplete(format!("SourceGroup {} groups unknown source {name:?}", sg.name_any()))
            })
        })
        .collect()
}

/// A model the worker loads itself, for a plan.
pub fn local_model(local: &LocalModel) -> plan::ModelSpec {
    plan::ModelSpec::Local {
        uri: local.uri.clone(),
        gguf_files: local.gguf_files.clone(),
        max_num_seqs: local.max_num_seqs.map(|n| n as usize),
    }
}

/// A model for a plan; an endpoint's API key reaches the worker as `key_env`.
pub fn model(spec: &ModelSpec, key_env: &str) -> Result<(plan::ModelSpec, Vec<SecretEnv>)> {
    match (&spec.local, &spec.endpoint) {
        (Some(local), None) => Ok((local_model(local), Vec::new())),
        (None, Some(endpoint)) => {
            let secret = endpoint.api_key_secret.as_ref().map(|s| SecretEnv {
                env: key_env.into(),
                secret: s.name.clone(),
                key: s.key.clone(),
            });
            Ok((
                plan::ModelSpec::Endpoint {
                    url: endpoint.url.clone(),
                    model: endpoint.model.clone(),
                    api_key_env: secret.as_ref().map(|s| s.env.clone()),
                    max_concurrency: endpoint.max_concurrency.map(|n| n as usize),
                },
                secret.into_iter().collect(),
            ))
        }
        _ => Err(Error::InvalidSpec("a model sets exactly one of local or endpoint".into())),
    }
}

/// Where a stage of `resource` writes, under the chain's root.
pub fn stage_base<K: Pipeline>(root: &str, resource: &K, stage: &str) -> String {
    names::stage_base(root, &resource.namespace().unwrap_or_default(), &K::plural(&()), &resource.name_any(), stage)
}

/// The upstream object a planner needs; the gate guarantees it once stages are planned.
pub fn upstream<'a, T>(object: &'a Option<T>, kind: &str) -> Result<&'a T> {
    object.as_ref().ok_or_else(|| Error::UpstreamIncomplete(format!("{kind} not found")))
}

/// The data plane's featurizer for the API's: an embedding model, or hashed n-grams with the
/// defaults filled in.
pub fn featurizer(spec: &crate::api::FeaturizerSpec) -> plan::FeaturizerSpec {
    if let Some(embedding) = &spec.embedding {
        return plan::FeaturizerSpec::Embedding { model: local_model(&embedding.model) };
    }
    let Some(hashed) = &spec.hashed else { return plan::FeaturizerSpec::default() };
    let defaults = plan::HashedSpec::default();
    plan::FeaturizerSpec::Hashed(plan::HashedSpec {
        dim_log2: hashed.dim_log2.unwrap_or(defaults.dim_log2),
        word_ngrams: hashed.word_ngrams.unwrap_or(defaults.word_ngrams),
        char_ngrams: match hashed.char_ngrams.as_deref() {
            Some(&[min, max]) => Some([min, max]),
            _ => defaults.char_ngrams,
        },
        sublinear_tf: hashed.sublinear_tf.unwrap_or(defaults.sublinear_tf),
        idf: hashed.idf.unwrap_or(defaults.idf),
        seed: hashed.seed.unwrap_or(defaults.seed),
    })
}
