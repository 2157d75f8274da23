//! The report page: the figures of a [`Run`] arranged for the template `report.html`
//! (minijinja, which escapes every value unless marked safe: only the charts' SVG is).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use minijinja::{context, Environment};
use scorer_runner::histogram::Histogram;
use scorer_runner::plan::{Agreement, ScopedCut, ScoreTotals};

use crate::api::CutPolicy;
use serde::Serialize;

use super::charts::{self, Chart};
use super::compare::overlap;
use super::Run;

const TEMPLATE: &str = include_str!("report.html");

/// The page, or, should the template fail, a page that says why.
pub fn render(run: &Run) -> String {
    let mut env = Environment::new();
    let page = env.add_template("report.html", TEMPLATE).and_then(|()| {
        env.get_template("report.html")?.render(context! {
            name => run.filter_run.name_any(),
            namespace => run.filter_run.namespace().unwrap_or_default(),
            generated => jiff_now(),
            summary => summary(run),
            similarity => similarity(run),
            groups => groups(run),
            kept => kept(run),
            comparison => comparison(run),
        })
    });
    page.unwrap_or_else(|e| {
        format!("<!doctype html><title>MIRA report</title><p>The report could not be rendered: {e}")
    })
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC").to_string()
}

#[derive(Serialize)]
struct Summary {
    method: &'static str,
    policy: String,
    retention: f64,
    kept: Option<String>,
    ready: Option<String>,
}

fn summary(run: &Run) -> Summary {
    let spec = &run.filter_run.spec;
    let status = run.filter_run.status.as_ref();
    let total = status.and_then(|s| s.total.as_ref());
    Summary {
        method: spec.method.as_str(),
        policy: format!("{:?}", spec.policy).to_lowercase(),
        retention: spec.retention,
        kept: total.map(|t| {
            format!("kept {} of {} tokens ({})", t.kept_tokens, t.total_tokens, share(t.kept_tokens, t.total_tokens))
        }),
        ready: status
            .and_then(|s| s.pipeline.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| format!("{} ({}): {}", c.status, c.reason, c.message)),
    }
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", 100.0 * part as f64 / whole as f64)
}

/// A colour from white (0) to `rgb` (1).
fn shade(value: f64, rgb: (u8, u8, u8)) -> String {
    let v = value.clamp(0.0, 1.0);
    let mix = |c: u8| (255.0 - (255.0 - c as f64) * v).round() as u8;
    format!("rgb({},{},{})", mix(rgb.0), mix(rgb.1), mix(rgb.2))
}

#[derive(Serialize)]
struct Cell {
    text: String,
    color: String,
    title: String,
    class: &'static str,
}

#[derive(Serialize)]
struct Similarity {
    /// Sources in group order, with their group.
    sources: Vec<(String, String)>,
    rows: Vec<Vec<Cell>>,
    silhouette: Option<f64>,
}

/// The source-by-source similarity of the cluster result, sources ordered by group, so groups
/// show as blocks.
fn similarity(run: &Run) -> Option<Similarity> {
    let cluster = run.cluster.as_ref()?;
    let sources = &cluster.sources;
    // Each source's group, looked up once: every cell of the matrix compares two of them.
    let groups: Vec<&str> =
        sources.iter().map(|s| cluster.group_of(&s.name).map_or("-", |g| g.name.as_str())).collect();
    let group = |i: usize| groups[i];
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (group(i), sources[i].name.as_str()));
    let rows = order
        .iter()
        .map(|&i| {
            order
                .iter()
                .map(|&j| {
                    let s = cluster.similarity.get(i).and_then(|row| row.get(j)).copied().unwrap_or(f64::NAN);
                    let same = group(i) == group(j);
                    Cell {
                        text: format!("{s:.2}"),
                        color: shade(s, if same { (46, 117, 182) } else { (120, 120, 120) }),
                        title: format!("{} ~ {}: {s:.3}", sources[i].name, sources[j].name),
                        class: if same { "same" } else { "" },
                    }
                })
                .collect()
        })
        .collect();
    Some(Similarity {
        sources: order.iter().map(|&i| (sources[i].name.clone(), group(i).to_string())).collect(),
        rows,
        silhouette: Some(cluster.silhouette),
    })
}

#[derive(Serialize)]
struct Dimension {
    id: String,
    name: String,
    description: String,
    support: Option<u64>,
    proposals: Vec<String>,
    masked_for: Vec<String>,
}

#[derive(Serialize)]
struct Group {
    name: String,
    sources: Vec<String>,
    pinned: bool,
    dimensions: Vec<Dimension>,
    /// The agreement table's columns (dimension names) and rows: per source, a cell per column.
    columns: Vec<String>,
    agreement: Vec<(String, Vec<Cell>)>,
    train_records: Option<u64>,
    validation_records: Option<u64>,
    scores: Option<Chart>,
    length: Option<Chart>,
    tokens: Option<u64>,
    kept: Option<u64>,
    drawn: Option<u64>,
    unranked: Vec<String>,
    ties: Vec<String>,
}

fn groups(run: &Run) -> Vec<Group> {
    let Some(sg) = run.source_group.status.as_ref() else { return Vec::new() };
    let rubrics = &run.rubrics;
    let students = run.distillation_job.iter().flat_map(|d| &d.status).flat_map(|s| &s.students).collect::<Vec<_>>();
    let filter = run.filter_run.status.as_ref().map(|s| s.groups.as_slice()).unwrap_or_default();
    let score_sources: Vec<&ScoreTotals> = run.scores.iter().flat_map(|s| &s.sources).collect();
    sg.groups
        .iter()
        .map(|g| {
            let rubric = rubrics.iter().find(|r| r.name == g.name);
            let student = students.iter().find(|s| s.group == g.name).copied();
            let filtered = filter.iter().find(|f| f.name == g.name);
            let distilled = run.distilled.iter().flat_map(|d| &d.students).find(|s| s.group == g.name);
            let agreement = distilled.map(|s| s.agreement.as_slice()).unwrap_or_default();
            let dimension_ids: Vec<String> = match rubric {
                Some(r) => r.dimensions.iter().map(|d| d.dimension.id.clone()).collect(),
                None => agreement.iter().map(|a| a.dimension.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
            };
            let proposals = run.proposals.get(&g.name);
            let dimensions = rubric
                .map(|r| &r.dimensions[..])
                .unwrap_or_default()
                .iter()
                .map(|d| Dimension {
                    id: d.dimension.id.clone(),
                    name: d.dimension.name.clone(),
                    description: d.dimension.description.clone(),
                    support: d.support,
                    proposals: proposals
                        .into_iter()
                        .flatten()
                        .filter(|p| p.anchor.as_deref() == Some(&d.dimension.id))
                        .map(|p| format!("{} ({}): {}", p.name, p.source, p.description))
                        .collect(),
                    masked_for: agreement
                        .iter()
                        .filter(|a| a.dimension == d.dimension.id && a.masked)
                        .map(|a| a.source.clone())
                        .collect(),
                })
                .collect();
            let of_group: Vec<&&ScoreTotals> = score_sources.iter().filter(|s| s.group == g.name).collect();
            let unranked: Vec<String> =
                of_group.iter().filter(|s| s.unranked).filter_map(|s| s.source.clone()).collect();
            // Every cut of the group, from the threshold result its selection used: the status
            // lists only the sources that most need a look.
            let cuts: Vec<&ScopedCut> = run
                .manifests
                .iter()
                .filter(|m| m.groups.contains_key(&g.name))
                .flat_map(|m| &m.thresholds.cuts)
                .filter(|c| c.applies_to(&g.name))
                .collect();
            Group {
                name: g.name.clone(),
                sources: g.sources.clone(),
                pinned: rubric.is_some_and(|r| r.pinned),
                columns: dimension_ids
                    .iter()
                    .map(|id| {
                        let named = rubric.and_then(|r| r.dimensions.iter().find(|d| &d.dimension.id == id));
                        named.map_or(id.clone(), |d| d.dimension.name.clone())
                    })
                    .collect(),
                dimensions,
                agreement: g
                    .sources
                    .iter()
                    .map(|source| {
                        let cells = dimension_ids
                            .iter()
                            .map(|d| {
                                agreement_cell(agreement.iter().find(|a| &a.source == source && &a.dimension == d))
                            })
                            .collect();
                        (source.clone(), cells)
                    })
                    .collect(),
                train_records: student.map(|s| s.train_records),
                validation_records: student.map(|s| s.validation_records),
                scores: (!of_group.is_empty()).then(|| {
                    let merged = |unranked: bool| {
                        Histogram::sum(of_group.iter().filter(|s| s.unranked == unranked).map(|s| &s.histogram))
                    };
                    let lines: Vec<(String, f64)> = cuts
                        .iter()
                        .filter(|c| !unranked.iter().any(|u| c.scope == format!("{}/{u}", g.name)))
                        .map(|c| (c.scope.clone(), c.cut.threshold))
                        .collect();
                    let different = |_| "the group's students score on different scales".to_string();
                    let (ranked, unranked) = (merged(false).map_err(different)?, merged(true).map_err(different)?);
                    // With no ranked source, an empty histogram of the same shape under the rest.
                    let empty = || unranked.as_ref().map(|h| Histogram::new(h.min, h.max, h.tokens.len()));
                    match ranked.or_else(empty) {
                        Some(ranked) => charts::score_histogram(&ranked, unranked.as_ref(), &lines),
                        None => Err("no scored records".into()),
                    }
                }),
                length: (!of_group.is_empty()).then(|| length_chart(&of_group)),
                tokens: filtered.and_then(|f| f.tokens),
                kept: filtered.and_then(|f| f.kept.as_ref()).map(|k| k.kept_tokens),
                drawn: filtered.and_then(|f| f.drawn_tokens),
                unranked,
                ties: cuts
                    .iter()
                    .filter_map(|c| {
                        let tie = c.cut.tie.as_ref()?;
                        Some(format!(
                            "{}: {} records ({} tokens) tied at the cut, kept by the seeded draw",
                            c.scope, tie.records, tie.tokens
                        ))
                    })
                    .collect(),
            }
        })
        .collect()
}

fn agreement_cell(a: Option<&Agreement>) -> Cell {
    let Some(a) = a else {
        return Cell { text: "-".into(), color: "#fff".into(), title: "not measured".into(), class: "" };
    };
    let rho = a.spearman.map_or("-".to_string(), |r| format!("{r:.2}"));
    let mut title = format!(
        "{} on {}: Spearman {rho}, MAE {:.2} over {} held-out records",
        a.dimension, a.source, a.mae, a.records
    );
    if a.masked {
        title.push_str(&format!("; masked: {}", a.reason.as_deref().unwrap_or("unreliable")));
    }
    Cell {
        text: format!("ρ {rho} · MAE {:.2}", a.mae),
        color: if a.masked { "#eee".into() } else { shade(a.spearman.unwrap_or(0.0), (56, 142, 60)) },
        title,
        class: if a.masked { "masked" } else { "" },
    }
}

/// Mean aggregate per length decile of each source's sample.
fn length_chart(sources: &[&&ScoreTotals]) -> Chart {
    let mut scale = (f64::INFINITY, f64::NEG_INFINITY);
    let series: Vec<(String, Vec<(f64, f64)>)> = sources
        .iter()
        .filter_map(|s| {
            scale = (scale.0.min(s.histogram.min), scale.1.max(s.histogram.max));
            // The sampler keeps only records with an aggregate, so every point has one.
            let deciles: Vec<(f64, f64)> = s
                .length
                .deciles()
                .iter()
                .map(|d| (d[d.len() / 2].1 as f64, d.iter().map(|p| p.2 as f64).sum::<f64>() / d.len() as f64))
                .collect();
            if deciles.is_empty() {
                return None;
            }
            let name = s.source.clone().unwrap_or_default();
            Some((if s.unranked { format!("{name} (unranked)") } else { name }, deciles))
        })
        .collect();
    if series.is_empty() {
        return Err("no length sample".into());
    }
    charts::score_by_length(&series, scale)
}

#[derive(Serialize)]
struct KeptRow {
    source: String,
    total: u64,
    kept: u64,
    share: String,
}

#[derive(Serialize)]
struct KeptView {
    rows: Vec<KeptRow>,
    chart: Chart,
}

/// Kept and total tokens per `group/source`, from the select manifests.
fn kept(run: &Run) -> Option<KeptView> {
    let sources: BTreeMap<&String, _> = run.manifests.iter().flat_map(|m| &m.sources).collect();
    if sources.is_empty() {
        return None;
    }
    let rows: Vec<KeptRow> = sources
        .iter()
        .map(|(source, k)| KeptRow {
            source: source.to_string(),
            total: k.total_tokens,
            kept: k.kept_tokens,
            share: share(k.kept_tokens, k.total_tokens),
        })
        .collect();
    let chart = charts::kept_bars(&rows.iter().map(|r| (r.source.clone(), r.total, r.kept)).collect::<Vec<_>>());
    Some(KeptView { rows, chart })
}

#[derive(Serialize)]
struct OverlapRow {
    peer: String,
    group: String,
    records: usize,
    jaccard: String,
    spearman: String,
}

#[derive(Serialize)]
struct Comparison {
    /// `name (method, policy, retention)` of this run, then of each peer.
    runs: Vec<String>,
    /// Per `group/source`: the kept share of its tokens in each run.
    shares: Vec<(String, Vec<String>)>,
    overlaps: Vec<OverlapRow>,
}

/// This selection beside the other selections of its corpus: kept shares per source, and per
/// group the overlap of the kept sets and the correlation of the scores on the records of both
/// comparison samples.
fn comparison(run: &Run) -> Option<Comparison> {
    if run.peers.is_empty() {
        return None;
    }
    let describe = |name: String, method: &str, policy: CutPolicy, retention: f64| {
        format!("{name} ({method}, {}, {retention})", format!("{policy:?}").to_lowercase())
    };
    let spec = &run.filter_run.spec;
    let mut runs = vec![describe(run.filter_run.name_any(), spec.method.as_str(), spec.policy, spec.retention)];
    runs.extend(run.peers.iter().map(|p| describe(p.name.clone(), p.method.as_str(), p.policy, p.retention)));
    let all: Vec<&[scorer_runner::plan::Manifest]> =
        std::iter::once(&run.manifests[..]).chain(run.peers.iter().map(|p| &p.manifests[..])).collect();
    let sources: BTreeSet<&String> = all.iter().flat_map(|m| m.iter()).flat_map(|m| m.sources.keys()).collect();
    let shares = sources
        .into_iter()
        .map(|source| {
            let cells = all
                .iter()
                .map(|manifests| {
                    let kept = manifests.iter().find_map(|m| m.sources.get(source));
                    kept.map_or("-".into(), |k| share(k.kept_tokens, k.total_tokens))
                })
                .collect();
            (source.clone(), cells)
        })
        .collect();
    let ours = samples(&run.manifests);
    let mut overlaps = Vec::new();
    for peer in &run.peers {
        let theirs = samples(&peer.manifests);
        for (group, sample) in &ours {
            let Some(other) = theirs.get(group) else { continue };
            let o = overlap(sample, other);
            overlaps.push(OverlapRow {
                peer: peer.name.clone(),
                group: group.to_string(),
                records: o.records,
                jaccard: o.jaccard.map_or("-".into(), |j| format!("{j:.2}")),
                spearman: o.spearman.map_or("-".into(), |r| format!("{r:.2}")),
            });
        }
    }
    Some(Comparison { runs, shares, overlaps })
}

/// Each group's comparison sample, over a run's select manifests (one per group).
fn samples(manifests: &[scorer_runner::plan::Manifest]) -> BTreeMap<&String, &Vec<scorer_runner::plan::SampledRecord>> {
    manifests.iter().flat_map(|m| &m.samples).collect()
}
