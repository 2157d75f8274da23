//! A resource as a person reads it: its stage, conditions, each stage's time and work, and
//! what it produced. Printed by `mira run` at its end and by `mira status` for a cluster.

use kube::ResourceExt;
use scorer_runner::progress;

use crate::api::{StagePhase, StageRecord};
use crate::reconcile::{KindStatus, Pipeline};

/// `Kind namespace/name: stage`, then indented lines: the conditions, the stages, the highlights.
pub fn describe<K: Pipeline>(object: &K) -> Vec<String> {
    let status = object.status().cloned().unwrap_or_default();
    let pipeline = status.pipeline();
    let mut lines = vec![format!(
        "{} {}/{}: {}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any(),
        pipeline.stage.as_deref().unwrap_or("-")
    )];
    for c in &pipeline.conditions {
        let message = if c.message.is_empty() { String::new() } else { format!(": {}", c.message) };
        lines.push(format!("  {}={} {}{message}", c.type_, c.status, c.reason));
    }
    lines.extend(pipeline.stages.iter().map(|r| format!("  {}", stage_line(r))));
    lines.extend(K::highlights(&status).into_iter().map(|l| format!("  {l}")));
    lines
}

/// `stage score/code: Succeeded in 1m03s (40 units, 120000 records)`, or while it runs
/// `stage score/code: Running (12/40 units, 1.2k records/s, ETA 3m10s)`: where a stage is, how
/// long it took start to finish, and its work.
pub fn stage_line(record: &StageRecord) -> String {
    let took = match (&record.started_at, &record.finished_at) {
        (Some(start), Some(end)) if record.job.is_some() => {
            let seconds = end.0.as_millisecond().saturating_sub(start.0.as_millisecond()) as f64 / 1000.0;
            format!(" in {}", progress::duration(seconds))
        }
        _ => String::new(),
    };
    let work = match &record.progress {
        Some(p) if record.phase == StagePhase::Running => format!(" ({})", p.summary()),
        Some(p) if p.units_total > 0 => format!(" ({} units, {} records)", p.units_total, p.records),
        _ => String::new(),
    };
    let reused = if record.job.is_none() { ", reused" } else { "" };
    format!("stage {}: {:?}{took}{reused}{work}", record.name, record.phase)
}
