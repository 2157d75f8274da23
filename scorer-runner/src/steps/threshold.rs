//! `threshold`: merges the score step's histograms and cuts them to the retention target: one cut
//! per group (default), one over all tokens, or one per source. Where whole bins miss the target
//! (ties), the records of the bin that straddles it are drawn by id ([`crate::tie_draw`]), which
//! takes two reads of that scope's score shards. Each cut reports the exact tokens it keeps, and
//! how many of them the draw kept; each source, the share of tokens kept per length decile. A
//! source that no reliable dimension ranks is cut on its own, by the draw alone.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::Context;
use crate::error::{Error, Result};
use crate::formats::scores::{ScoreKey, ScoreKeys};
use crate::histogram::{Cut, Histogram};
use crate::plan::{CutPolicy, ScopedCut, ScoreResult, ScoreTotals, SourceLength, ThresholdPlan, ThresholdResult};
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
        let mut cut = scope.histogram.cut(scope.scored_retention());
        if let Some(straddle) = cut.straddle(&scope.histogram) {
            cut = draw(ctx, plan, &scope, &cut, straddle).await?;
        }
        cuts.push(ScopedCut {
            scope: scope.name,
            retention: scope.retention,
            skipped_tokens: scope.skipped_tokens,
            cut,
        });
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
    /// Where its score shards are, under each score root (Hive-style path prefixes, see
    /// [`crate::formats::scores`]).
    shards: Vec<String>,
    /// Estimated tokens of its records skipped at scoring ([`skipped_tokens`]).
    skipped_tokens: u64,
}

/// A source's records skipped at scoring, in tokens at its mean tokens per scored record (a
/// skipped record's text may be unreadable, so its own tokens are unknown).
fn skipped_tokens(totals: &ScoreTotals) -> u64 {
    match totals.records {
        0 => 0,
        records => (totals.skipped.total() as f64 * totals.tokens as f64 / records as f64).round() as u64,
    }
}

impl Scope {
    /// One scope over `sources` (none of them unranked), or none when there are none: the
    /// shards of a whole group, or of every group, are listed by one prefix when nothing of it
    /// is cut elsewhere.
    fn over(name: String, retention: f64, sources: &[&ScoreTotals], whole: String, all: bool) -> Result<Option<Self>> {
        let sum = Histogram::sum(sources.iter().map(|s| &s.histogram))
            .map_err(|_| Error::plan(format!("a cut over {name} needs every group's students on the same scale")))?;
        let Some(histogram) = sum else { return Ok(None) };
        let shards = if all { vec![whole] } else { sources.iter().map(|s| source_shards(s)).collect() };
        let skipped_tokens = sources.iter().map(|s| skipped_tokens(s)).sum();
        Ok(Some(Scope { name, retention, histogram, shards, skipped_tokens }))
    }

    /// The share of its scored tokens the cut keeps: `retention` of scored and skipped tokens
    /// together (at most all the scored ones).
    fn scored_retention(&self) -> f64 {
        let scored = self.histogram.total_tokens();
        if scored == 0 {
            return self.retention;
        }
        (self.retention * (scored + self.skipped_tokens) as f64 / scored as f64).min(1.0)
    }

    /// A source cut on its own.
    fn source(totals: &ScoreTotals, retention: f64) -> Self {
        Scope {
            name: format!("{}/{}", totals.group, totals.source.as_deref().unwrap_or_default()),
            retention,
            histogram: totals.histogram.clone(),
            shards: vec![source_shards(totals)],
            skipped_tokens: skipped_tokens(totals),
        }
    }
}

fn source_shards(totals: &ScoreTotals) -> String {
    format!("scores/group={}/source={}/", totals.group, totals.source.as_deref().unwrap_or_default())
}

/// The scopes a plan cuts, from the score totals. A source that no reliable dimension ranks
/// (`unranked`) is always cut on its own, at its group's retention: its records all have the
/// same aggregate, so the seeded draw keeps that share of them at random, and the ranked
/// sources' cut is not moved by a block of tied records.
fn scopes(plan: &ThresholdPlan, scores: &ScoreResult) -> Result<Vec<Scope>> {
    check_retention("the run", plan.retention)?;
    for group in plan.group_retention.keys() {
        if !scores.groups.iter().any(|g| &g.group == group) {
            return Err(Error::plan(format!("groupRetention names unknown group {group:?}")));
        }
    }
    let retention_of = |group: &str| match plan.policy {
        CutPolicy::Group => check_retention(group, *plan.group_retention.get(group).unwrap_or(&plan.retention)),
        CutPolicy::Global | CutPolicy::Source => Ok(plan.retention),
    };
    let (unranked, ranked): (Vec<&ScoreTotals>, Vec<&ScoreTotals>) = scores.sources.iter().partition(|s| s.unranked);
    let mut scopes = Vec::new();
    match plan.policy {
        CutPolicy::Group => {
            for g in &scores.groups {
                let of_group: Vec<&ScoreTotals> = ranked.iter().copied().filter(|s| s.group == g.group).collect();
                let all = !unranked.iter().any(|s| s.group == g.group);
                let whole = format!("scores/group={}/", g.group);
                scopes.extend(Scope::over(g.group.clone(), retention_of(&g.group)?, &of_group, whole, all)?);
            }
        }
        CutPolicy::Source => scopes.extend(ranked.iter().map(|s| Scope::source(s, plan.retention))),
        CutPolicy::Global => {
            if scores.groups.is_empty() {
                return Err(Error::plan("no scored groups"));
            }
            let all = unranked.is_empty();
            scopes.extend(Scope::over("global".into(), plan.retention, &ranked, "scores/".into(), all)?);
        }
    }
    for s in unranked {
        scopes.push(Scope::source(s, retention_of(&s.group)?));
    }
    Ok(scopes)
}

/// Settles a cut's tie draw: the first read of the scope's score shards sums the straddling
/// bin's tokens per slice of the draw keys, the second collects the records of the one slice
/// the target falls in.
async fn draw(ctx: &Context, plan: &ThresholdPlan, scope: &Scope, cut: &Cut, straddle: Straddle) -> Result<Cut> {
    let mut shards = Vec::new();
    for root in &plan.scores {
        for prefix in &scope.shards {
            shards.extend(ctx.storage.list(&join(root, prefix)).await?.into_iter().map(|o| o.uri));
        }
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
    /// The cut that applies to a record of `source` in `group`: the source's own, where it has
    /// one (every source under the source policy, an unranked source under any), else the
    /// policy's.
    pub fn cut_for(&self, group: &str, source: &str) -> Option<&ScopedCut> {
        let find = |scope: &str| self.cuts.iter().find(|c| c.scope == scope);
        find(&format!("{group}/{source}")).or_else(|| match self.policy {
            CutPolicy::Group => find(group),
            CutPolicy::Global => find("global"),
            CutPolicy::Source => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::length::LengthSample;
    use crate::plan::SkipCounts;

    fn totals(group: &str, source: Option<&str>, scores: &[(f64, u64)], unranked: bool) -> ScoreTotals {
        let mut histogram = Histogram::new(1.0, 5.0, 40);
        for &(score, tokens) in scores {
            histogram.add(score, tokens);
        }
        ScoreTotals {
            group: group.into(),
            source: source.map(str::to_string),
            shards: 1,
            records: scores.len() as u64,
            tokens: scores.iter().map(|s| s.1).sum(),
            skipped: SkipCounts::default(),
            histogram,
            length: LengthSample::default(),
            length_correlation: None,
            unranked,
        }
    }

    fn plan(policy: CutPolicy) -> ThresholdPlan {
        ThresholdPlan {
            storage: Default::default(),
            output: "out".into(),
            scores: vec!["score".into()],
            policy,
            retention: 0.5,
            group_retention: [("prose".to_string(), 0.25)].into(),
        }
    }

    /// prose: web ranked (scores spread), forum unranked (every record at the midpoint); code:
    /// one ranked source.
    fn scores() -> ScoreResult {
        let web: Vec<(f64, u64)> = (0..40).map(|i| (1.0 + i as f64 / 10.0, 10)).collect();
        let forum = vec![(3.0, 7); 30];
        let code: Vec<(f64, u64)> = (0..20).map(|i| (1.0 + i as f64 / 5.0, 5)).collect();
        let all: Vec<(f64, u64)> = web.iter().chain(&forum).copied().collect();
        ScoreResult {
            groups: vec![totals("code", None, &code, false), totals("prose", None, &all, false)],
            sources: vec![
                totals("code", Some("repo"), &code, false),
                totals("prose", Some("forum"), &forum, true),
                totals("prose", Some("web"), &web, false),
            ],
            masked: Default::default(),
        }
    }

    #[test]
    fn an_unranked_source_is_cut_on_its_own_at_its_groups_retention() {
        let scores = scores();
        let by_name = |policy| {
            let scopes = scopes(&plan(policy), &scores).unwrap();
            scopes.into_iter().map(|s| (s.name.clone(), s)).collect::<BTreeMap<_, _>>()
        };
        let group = by_name(CutPolicy::Group);
        assert_eq!(group.keys().collect::<Vec<_>>(), ["code", "prose", "prose/forum"]);
        // The group's cut ranks web alone, and lists only web's shards for its draw.
        assert_eq!(group["prose"].histogram.total_tokens(), 400);
        assert_eq!(group["prose"].shards, ["scores/group=prose/source=web/"]);
        assert_eq!(group["code"].shards, ["scores/group=code/"], "a group with no unranked source: one prefix");
        // forum: the prose group's retention, its own shards, all its tokens in one bin.
        let forum = &group["prose/forum"];
        assert_eq!(forum.retention, 0.25);
        assert_eq!(forum.shards, ["scores/group=prose/source=forum/"]);
        assert!(forum.histogram.cut(forum.retention).straddle(&forum.histogram).is_some(), "the draw decides");

        let global = by_name(CutPolicy::Global);
        assert_eq!(global.keys().collect::<Vec<_>>(), ["global", "prose/forum"]);
        assert_eq!(global["global"].histogram.total_tokens(), 500);
        assert_eq!(global["prose/forum"].retention, 0.5);

        let source = by_name(CutPolicy::Source);
        assert_eq!(source.keys().collect::<Vec<_>>(), ["code/repo", "prose/forum", "prose/web"]);
    }

    #[test]
    fn records_skipped_at_scoring_count_in_the_target_at_their_sources_mean_tokens() {
        let mut scores = scores();
        // code/repo: 20 records of 5 tokens scored; 5 more skipped, about 25 tokens.
        let repo = scores.sources.iter_mut().find(|s| s.source.as_deref() == Some("repo")).unwrap();
        repo.skipped.counts.insert("invalid_json".into(), 5);
        let by_source = scopes(&plan(CutPolicy::Source), &scores).unwrap();
        let repo = by_source.iter().find(|s| s.name == "code/repo").unwrap();
        assert_eq!(repo.skipped_tokens, 25);
        // Half of 125 tokens, all from the 100 scored: 62.5 %.
        assert!((repo.scored_retention() - 0.625).abs() < 1e-12, "{}", repo.scored_retention());
        let web = by_source.iter().find(|s| s.name == "prose/web").unwrap();
        assert_eq!((web.skipped_tokens, web.scored_retention()), (0, 0.5), "nothing skipped, nothing moves");
        let group = scopes(&plan(CutPolicy::Group), &scores).unwrap();
        assert_eq!(group.iter().find(|s| s.name == "code").unwrap().skipped_tokens, 25, "a group sums its sources'");
        // A source that skipped most of its records is kept whole, no more.
        let repo = scores.sources.iter_mut().find(|s| s.source.as_deref() == Some("repo")).unwrap();
        repo.skipped.counts.insert("invalid_json".into(), 60);
        let by_source = scopes(&plan(CutPolicy::Source), &scores).unwrap();
        assert_eq!(by_source.iter().find(|s| s.name == "code/repo").unwrap().scored_retention(), 1.0);
    }

    #[test]
    fn a_source_with_its_own_cut_takes_it_under_every_policy() {
        let cut = |scope: &str| ScopedCut {
            scope: scope.into(),
            retention: 0.5,
            skipped_tokens: 0,
            cut: Histogram::new(1.0, 5.0, 4).cut(0.5),
        };
        let result = ThresholdResult {
            policy: CutPolicy::Group,
            cuts: vec![cut("prose"), cut("prose/forum")],
            lengths: Vec::new(),
        };
        assert_eq!(result.cut_for("prose", "forum").unwrap().scope, "prose/forum");
        assert_eq!(result.cut_for("prose", "web").unwrap().scope, "prose");
        assert!(result.cut_for("code", "repo").is_none());
        let global = ThresholdResult { policy: CutPolicy::Global, cuts: vec![cut("global")], lengths: Vec::new() };
        assert_eq!(global.cut_for("code", "repo").unwrap().scope, "global");
    }
}
