//! `threshold`: merges the score step's histograms and cuts them to the retention target: one cut
//! per group (default), one over all tokens, or one per source. Each cut reports the exact tokens
//! it keeps and the bound on its distance from the target.

use super::Context;
use crate::error::{Error, Result};
use crate::plan::{CutPolicy, ScopedCut, ScoreResult, ThresholdPlan, ThresholdResult};
use crate::storage::join;

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
    let result = cut(plan, &scores)?;
    ctx.write_result(&plan.output, &result).await?;
    Ok(result)
}

/// The cuts a plan asks for, from the score totals (pure).
pub fn cut(plan: &ThresholdPlan, scores: &ScoreResult) -> Result<ThresholdResult> {
    check_retention("the run", plan.retention)?;
    for group in plan.group_retention.keys() {
        if !scores.groups.iter().any(|g| &g.group == group) {
            return Err(Error::plan(format!("groupRetention names unknown group {group:?}")));
        }
    }
    let cuts = match plan.policy {
        CutPolicy::Group => scores
            .groups
            .iter()
            .map(|g| {
                let retention =
                    check_retention(&g.group, *plan.group_retention.get(&g.group).unwrap_or(&plan.retention))?;
                Ok(ScopedCut { scope: g.group.clone(), retention, cut: g.histogram.cut(retention) })
            })
            .collect::<Result<Vec<_>>>()?,
        CutPolicy::Source => scores
            .sources
            .iter()
            .map(|s| ScopedCut {
                scope: format!("{}/{}", s.group, s.source.as_deref().unwrap_or_default()),
                retention: plan.retention,
                cut: s.histogram.cut(plan.retention),
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
            vec![ScopedCut { scope: "global".into(), retention: plan.retention, cut: merged.cut(plan.retention) }]
        }
    };
    Ok(ThresholdResult { policy: plan.policy, cuts })
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
