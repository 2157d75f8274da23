//! Step results for a reconcile pass, read from storage: the adapters' one way to the data.
//!
//! The engine names the output roots it can use ([`wanted_results`]); results found there may
//! make later stages plannable, so reading repeats until nothing new is wanted. Outputs are
//! content-addressed, so a result once read never changes and is cached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use scorer_runner::plan::StepResult;
use scorer_runner::plan::StorageConfig;
use scorer_runner::steps::RESULT;
use scorer_runner::storage::{join, Storage};

use scorer_runner::progress;

use crate::api::{StagePhase, Step};
use crate::reconcile::{
    wanted_results, Input, JobState, KindStatus, Lineage, Pipeline, Policy, StageProgress, StepResults,
};
use crate::{Error, Result};

/// Results kept in memory; the least recently used are read again when needed.
const CACHE_ENTRIES: NonZeroUsize = NonZeroUsize::new(1024).expect("not zero");
/// Results read at once.
const CONCURRENT_READS: usize = 16;

/// Reads and caches step results, with one storage client per configuration.
pub struct Results {
    stores: Mutex<HashMap<String, Arc<Storage>>>,
    cache: Mutex<LruCache<String, Arc<StepResult>>>,
}

impl Default for Results {
    fn default() -> Self {
        Results { stores: Mutex::default(), cache: Mutex::new(LruCache::new(CACHE_ENTRIES)) }
    }
}

impl Results {
    /// What a pass reads from storage: every step result it can use, and the workers' progress.
    pub async fn observe<K: Pipeline>(
        &self,
        resource: &K,
        lineage: &Lineage,
        jobs: &BTreeMap<String, JobState>,
        config: &StorageConfig,
    ) -> Result<(StepResults, StageProgress)> {
        let results = self.gather(resource, lineage, jobs, config).await?;
        Ok((results, self.progress(resource, config).await))
    }

    /// Every result the pass can use, keyed by output root.
    async fn gather<K: Pipeline>(
        &self,
        resource: &K,
        lineage: &Lineage,
        jobs: &BTreeMap<String, JobState>,
        config: &StorageConfig,
    ) -> Result<StepResults> {
        let storage = self.storage(config);
        let mut found = BTreeMap::new();
        let mut absent = BTreeSet::new();
        loop {
            let input = Input {
                resource,
                lineage,
                jobs,
                results: &found,
                progress: &StageProgress::new(),
                policy: &Policy::default(),
            };
            let wanted: Vec<(String, Step)> = wanted_results(&input)
                .into_iter()
                .filter(|(o, _)| !found.contains_key(o) && !absent.contains(o))
                .collect();
            if wanted.is_empty() {
                return Ok(found);
            }
            let read: Vec<(String, Option<Arc<StepResult>>)> = futures::stream::iter(wanted)
                .map(|(output, step)| {
                    let storage = storage.clone();
                    async move { self.read(&storage, &output, step).await.map(|value| (output, value)) }
                })
                .buffered(CONCURRENT_READS)
                .try_collect()
                .await?;
            // What is wanted depends only on what is found: nothing new found, nothing new wanted.
            if read.iter().all(|(_, value)| value.is_none()) {
                return Ok(found);
            }
            for (output, value) in read {
                if let Some(value) = value {
                    found.insert(output, value);
                } else {
                    absent.insert(output);
                }
            }
        }
    }

    /// The workers' progress of every stage not finished at the start of the pass, and of a
    /// finished one until its final figures are in (a step writes its result a moment before
    /// its last progress). Progress is for people: a read that fails is logged and left out; it
    /// never fails the pass.
    async fn progress<K: Pipeline>(&self, resource: &K, config: &StorageConfig) -> StageProgress {
        let storage = self.storage(config);
        let unfinished: Vec<String> = resource
            .status()
            .map(|s| s.pipeline().stages.iter())
            .into_iter()
            .flatten()
            .filter(|r| match r.phase {
                StagePhase::Pending | StagePhase::Running => true,
                StagePhase::Succeeded => {
                    r.job.is_some() && r.progress.as_ref().is_none_or(|p| p.units_done < p.units_total)
                }
                StagePhase::Failed => false,
            })
            .map(|r| r.output.clone())
            .collect();
        futures::stream::iter(unfinished)
            .map(|output| {
                let storage = storage.clone();
                async move {
                    match progress::read(&storage, &output).await {
                        Ok(snapshot) => snapshot.map(|s| (output, s)),
                        Err(e) => {
                            tracing::warn!(output, error = %e, "could not read a stage's progress");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(CONCURRENT_READS)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// The storage client for a configuration, made once.
    pub fn storage(&self, config: &StorageConfig) -> Arc<Storage> {
        let key = serde_json::to_string(config).unwrap_or_default();
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.entry(key).or_insert_with(|| Arc::new(Storage::new(config.clone()))).clone()
    }

    /// A result, slimmed to what the engine reads, from the cache or storage.
    async fn read(&self, storage: &Storage, output: &str, step: Step) -> Result<Option<Arc<StepResult>>> {
        if let Some(value) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(output) {
            return Ok(Some(value.clone()));
        }
        let uri = join(output, RESULT);
        let Some(bytes) = storage.get_opt(&uri).await.map_err(Error::ReadResult)? else { return Ok(None) };
        let mut value = StepResult::parse(step, &bytes).map_err(|source| Error::InvalidResult { uri, source })?;
        value.slim();
        let value = Arc::new(value);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(output.to_string(), value.clone());
        Ok(Some(value))
    }
}
