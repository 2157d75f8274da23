//! `threshold`: merges the score step's histograms and cuts them to the retention target: one cut
//! per group (default), one over all tokens, or one per source. Where whole bins miss the target
//! (ties), the records of the bin that straddles it are drawn by id ([`crate::tie_draw`]), which
//! takes two reads of that scope's score shards. Each cut reports the exact tokens it keeps, and
//! how many of them the draw kept; each source, the share of tokens kept per length decile.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::Context;
use crate::error::{Error, Result};
use crate::formats::scores::{ScoreKey, ScoreKeys};
use crate::histogram::{Cut, Histogram};
use crate::plan::{CutPolicy, ScopedCut, ScoreResult, SourceLength, ThresholdPlan, ThresholdResult};
use crate::storage::join;
use crate::tie_draw::{Buckets, Straddle};

/// Score shards read at once by the tie draw.
const DRAW_READS: usize = 8;

fn check_retention(scope: &str, r: f64) -> Result<f64> {
    if r > 0.0 && r <= 1.0 {
        Ok(r)
    } else {
        Err(Error::plan(format!("retention for {scope} is {r}; it must be in (0, 1]")))
    }
}

pub async fn run(ctx: &Context, plan: &ThresholdPlan) -> Result<ThresholdResult> {
    if plan.scores.is_empty() {
        return Err(Error::plan("no score results named"));
    }
    // The cuts read the totals only; the masks stay in the score results.
    let mut scores = ScoreResult { groups: Vec::new(), sources: Vec::new(), masked: Default::default() };
    for root in &plan.scores {
        let part: ScoreResult = ctx.storage.get_json(&join(root, super::RESULT)).await?;
        scores.groups.extend(part.groups);
        scores.sources.extend(part.sources);
    }
    let mut cuts = Vec::new();
    for scope in scopes(plan, &scores)? {
        let mut cut = scope.histogram.cut(scope.retention);
        if let Some(straddle) = cut.straddle(&scope.histogram) {
            cut = draw(ctx, plan, &scope, &cut, straddle).await?;
        }
        cuts.push(ScopedCut { scope: scope.name, retention: scope.retention, cut });
    }
    let mut result = ThresholdResult { policy: plan.policy, cuts, lengths: Vec::new() };
    result.lengths = lengths(&result, &scores);
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// Per source, whether its scores and its cut follow length (from the score step's samples).
fn lengths(result: &ThresholdResult, scores: &ScoreResult) -> Vec<SourceLength> {
    scores
        .sources
        .iter()
        .filter_map(|totals| {
            let source = totals.source.as_deref()?;
            let cut = result.cut_for(&totals.group, source)?;
            Some(SourceLength {
                group: totals.group.clone(),
                source: source.to_string(),
                sampled: totals.length.len() as u64,
                rank_correlation: totals.length_correlation,
                deciles: totals.length.kept_by_decile(&totals.histogram, &cut.cut),
            })
        })
        .collect()
}

/// What one cut applies to.
struct Scope {
    /// `global`, the group, or `group/source`.
    name: String,
    retention: f64,
    /// Its tokens per aggregate score, merged over its groups or sources.
    histogram: Histogram,
    /// Where its score shards are, under each score root (Hive-style paths, see
    /// [`crate::formats::scores`]).
    shards: String,
}

/// The scopes a plan cuts, from the score totals.
fn scopes(plan: &ThresholdPlan, scores: &ScoreResult) -> Result<Vec<Scope>> {
    check_retention("the run", plan.retention)?;
    for group in plan.group_retention.keys() {
        if !scores.groups.iter().any(|g| &g.group == group) {
            return Err(Error::plan(format!("groupRetention names unknown group {group:?}")));
        }
    }
    Ok(match plan.policy {
        CutPolicy::Group => scores
            .groups
            .iter()
            .map(|g| {
                let retention =
                    check_retention(&g.group, *plan.group_retention.get(&g.group).unwrap_or(&plan.retention))?;
                Ok(Scope {
                    name: g.group.clone(),
                    retention,
                    histogram: g.histogram.clone(),
                    shards: format!("scores/group={}/", g.group),
                })
            })
            .collect::<Result<Vec<_>>>()?,
        CutPolicy::Source => scores
            .sources
            .iter()
            .map(|s| {
                let source = s.source.as_deref().unwrap_or_default();
                Scope {
                    name: format!("{}/{source}", s.group),
                    retention: plan.retention,
                    histogram: s.histogram.clone(),
                    shards: format!("scores/group={}/source={source}/", s.group),
                }
            })
            .collect(),
        CutPolicy::Global => {
            let mut groups = scores.groups.iter();
            let first = groups.next().ok_or_else(|| Error::plan("no scored groups"))?;
            let mut merged = first.histogram.clone();
            for g in groups {
                if !merged.same_shape(&g.histogram) {
                    return Err(Error::plan("a global cut needs every group's students on the same scale"));
                }
                merged.merge(&g.histogram);
            }
            vec![Scope {
                name: "global".into(),
                retention: plan.retention,
                histogram: merged,
                shards: "scores/".into(),
            }]
        }
    })
}

/// Settles a cut's tie draw: the first read of the scope's score shards sums the straddling
/// bin's tokens per slice of the draw keys, the second collects the records of the one slice
/// the target falls in.
async fn draw(ctx: &Context, plan: &ThresholdPlan, scope: &Scope, cut: &Cut, straddle: Straddle) -> Result<Cut> {
    let mut shards = Vec::new();
    for root in &plan.scores {
        shards.extend(ctx.storage.list(&join(root, &scope.shards)).await?.into_iter().map(|o| o.uri));
    }
    let histogram = Arc::new(scope.histogram.clone());
    let in_bin = {
        let histogram = histogram.clone();
        move |key: &ScoreKey| histogram.bin(key.aggregate as f64) == straddle.bin
    };
    let first = in_bin.clone();
    let buckets = read_keys(ctx, &shards, Buckets::default(), move |buckets, key| {
        if first(&key) {
            buckets.add(key.draw, key.tokens);
        }
    })
    .await?;
    let Some(located) = buckets.locate(straddle.need) else {
        return Err(Error::plan(format!(
            "the score shards of {} hold fewer tokens in bin {} than their totals say; rerun score",
            scope.name, straddle.bin
        )));
    };
    let boundary = read_keys(ctx, &shards, Vec::new(), move |boundary, key| {
        if in_bin(&key) && located.holds(key.draw) {
            boundary.push((key.draw, key.tokens));
        }
    })
    .await?;
    Ok(cut.settle(&histogram, straddle, located, boundary))
}

/// Folds every record key of `shards` into one value: each shard into its own copy of `init`,
/// the copies merged as they finish (memory follows the reads in flight, not the shards).
async fn read_keys<T, F>(ctx: &Context, shards: &[String], init: T, add: F) -> Result<T>
where
    T: Merge + Clone + Send + 'static,
    F: Fn(&mut T, ScoreKey) + Clone + Send + Sync + 'static,
{
    let empty = init.clone();
    futures::stream::iter(shards)
        .map(|uri| {
            let (add, mut part) = (add.clone(), empty.clone());
            async move {
                let (path, _guard) = ctx.local_file(uri).await?;
                let uri = uri.clone();
                ctx.compute(move || {
                    for key in ScoreKeys::open(&uri, &path)? {
                        add(&mut part, key?);
                    }
                    Ok(part)
                })
                .await
            }
        })
        .buffer_unordered(DRAW_READS)
        .try_fold(init, |mut total, part| async move {
            total.merge(part);
            Ok(total)
        })
        .await
}

/// Per-shard parts of a fold over score keys, added up.
trait Merge {
    fn merge(&mut self, other: Self);
}

impl Merge for Buckets {
    fn merge(&mut self, other: Self) {
        Buckets::merge(self, &other);
    }
}

impl Merge for Vec<(u64, u64)> {
    fn merge(&mut self, other: Self) {
        self.extend(other);
    }
}

impl ThresholdResult {
    /// The cut that applies to a record of `source` in `group`.
    pub fn cut_for(&self, group: &str, source: &str) -> Option<&ScopedCut> {
        let scope = match self.policy {
            CutPolicy::Group => group.to_string(),
            CutPolicy::Global => "global".to_string(),
            CutPolicy::Source => format!("{group}/{source}"),
        };
        self.cuts.iter().find(|c| c.scope == scope)
    }
}
