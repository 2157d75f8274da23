//! The baseline rankers (random, DSIR) through score -> threshold -> select on a generated
//! corpus: budgets met, selections deterministic, DSIR drawn towards its target, and every
//! manifest carrying the comparison sample the run report compares selections on.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use common::context;
use mira_testkit::synth::{self, Generated, Kind, SynthSource};
use scorer_runner::plan::*;
use scorer_runner::steps::{self, Context};
use scorer_runner::storage::join;
use scorer_runner::tie_draw::draw_key;

fn corpus(records_per_shard: usize) -> Vec<SynthSource> {
    let source = |name: &str, kind, format| SynthSource {
        name: name.into(),
        kind,
        format,
        shards: 2,
        records_per_shard,
        malformed_every: Some(50),
    };
    vec![
        source("web", Kind::Prose, Format::Jsonl),
        source("code", Kind::Code, Format::Parquet),
        source("math", Kind::Math, Format::JsonlZst),
    ]
}

fn source(name: &str, uri: String) -> Source {
    Source {
        name: name.into(),
        uri,
        format: None,
        text: TextSpec { id_field: Some("id".into()), ..Default::default() },
        shard_fraction: None,
    }
}

/// Scores one group of every source with `ranker`, cuts at `retention` under `policy`, selects.
async fn select(ctx: &Context, sources: &[Source], ranker: RankerSpec, policy: CutPolicy, out: &str) -> Manifest {
    let group = ScoreGroup { name: "all".into(), sources: sources.to_vec(), ranker };
    let mut score = ScorePlan::new(vec![group]);
    score.output = join(out, "score");
    steps::score::run(ctx, &score).await.expect("score");
    let mut threshold = ThresholdPlan::new(vec![score.output.clone()], 0.5);
    threshold.output = join(out, "threshold");
    threshold.policy = policy;
    steps::threshold::run(ctx, &threshold).await.expect("threshold");
    let groups = vec![GroupSources { name: "all".into(), sources: sources.to_vec() }];
    let mut select = SelectPlan::new(groups, score.output.clone(), threshold.output.clone());
    select.output = join(out, "select");
    steps::select::run(ctx, &select).await.expect("select")
}

fn share(kept: &Kept) -> f64 {
    kept.kept_tokens as f64 / kept.total_tokens as f64
}

fn generate(dir: &Path) -> (Vec<Source>, Vec<Generated>) {
    generate_records(dir, 150)
}

fn generate_records(dir: &Path, records_per_shard: usize) -> (Vec<Source>, Vec<Generated>) {
    let mut generated = Vec::new();
    for s in corpus(records_per_shard) {
        generated.extend(synth::write_source(&dir.join("corpus"), &s, 11).unwrap());
    }
    let sources = corpus(records_per_shard)
        .iter()
        .map(|s| source(&s.name, dir.join("corpus").join(&s.name).display().to_string()))
        .collect();
    (sources, generated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_keeps_each_source_share_and_the_same_records_on_every_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (sources, generated) = generate(tmp.path());
    let ctx = context(&Default::default(), "w", tmp.path());
    let out = |name: &str| tmp.path().join(name).display().to_string();
    let by_source = select(&ctx, &sources, RankerSpec::Random, CutPolicy::Source, &out("a")).await;
    for (source, kept) in &by_source.sources {
        assert!((share(kept) - 0.5).abs() < 0.02, "{source} keeps half its tokens: {kept:?}");
    }
    // One cut over the group: each source's share holds in expectation.
    let by_group = select(&ctx, &sources, RankerSpec::Random, CutPolicy::Group, &out("b")).await;
    for (source, kept) in &by_group.sources {
        assert!((share(kept) - 0.5).abs() < 0.1, "{source} keeps about half its tokens: {kept:?}");
    }
    // Not the records of the lowest hashes, nor those of the highest quality: a random half.
    let quality: HashMap<u64, u32> = generated.iter().map(|g| (draw_key(&g.id), g.quality)).collect();
    let sample = &by_source.samples["all"];
    let mean = |kept: bool| {
        let q: Vec<f64> = sample.iter().filter(|r| r.kept == kept).map(|r| quality[&r.key] as f64).collect();
        q.iter().sum::<f64>() / q.len() as f64
    };
    assert!((mean(true) - mean(false)).abs() < 0.4, "kept {} vs dropped {}", mean(true), mean(false));

    let again = select(&ctx, &sources, RankerSpec::Random, CutPolicy::Source, &out("c")).await;
    assert_eq!(again.samples, by_source.samples, "the same draw on every run");
    assert_eq!(again.sources, by_source.sources);
    let records: usize = generated.len();
    assert_eq!(sample.len(), records.min(steps::select::COMPARISON_SAMPLE), "every scored record, up to the cap");
    let at = |r: &SampledRecord| steps::select::sample_key(r.key);
    assert!(sample.windows(2).all(|w| at(&w[0]) < at(&w[1])), "the smallest sample keys, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsir_draws_the_selection_towards_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let (sources, generated) = generate(tmp.path());
    // The target: careful prose, of other records than the corpus's.
    let target_dir = tmp.path().join("target");
    let reference = SynthSource {
        name: "reference".into(),
        kind: Kind::Prose,
        format: Format::Jsonl,
        shards: 1,
        records_per_shard: 400,
        malformed_every: None,
    };
    let careful: Vec<Vec<u8>> = synth::write_source(&tmp.path().join("pool"), &reference, 99)
        .unwrap()
        .into_iter()
        .filter(|g| g.quality >= 3)
        .map(|g| serde_json::to_vec(&serde_json::json!({"id": g.id, "text": g.text})).unwrap())
        .collect();
    std::fs::create_dir_all(&target_dir).unwrap();
    synth::write_shard(&target_dir.join("part-0.jsonl"), Format::Jsonl, &careful).unwrap();

    let ctx = context(&Default::default(), "w", tmp.path());
    let mut dsir = DsirSpec::new(source("target", target_dir.display().to_string()));
    dsir.sample = 500;
    let out = tmp.path().join("dsir").display().to_string();
    let manifest = select(&ctx, &sources, RankerSpec::Dsir(dsir.clone()), CutPolicy::Group, &out).await;
    assert!((share(&manifest.total) - 0.5).abs() < 0.01, "the budget: {:?}", manifest.total);
    let web = share(&manifest.sources["all/web"]);
    let others = share(&manifest.sources["all/code"]).max(share(&manifest.sources["all/math"]));
    assert!(web > 0.9 && web > 2.0 * others, "the target is prose: web keeps {web:.2}, code or math {others:.2}");
    // Cut per source, the careful prose records, more like the target, are kept first.
    let by_source = tmp.path().join("dsir-by-source").display().to_string();
    let per_source = select(&ctx, &sources, RankerSpec::Dsir(dsir.clone()), CutPolicy::Source, &by_source).await;
    assert!((share(&per_source.sources["all/web"]) - 0.5).abs() < 0.02);
    let quality: HashMap<u64, (&str, u32)> =
        generated.iter().map(|g| (draw_key(&g.id), (g.source.as_str(), g.quality))).collect();
    let mut kept_by_quality: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    for record in &per_source.samples["all"] {
        let (source, q) = quality[&record.key];
        if source == "web" {
            let entry = kept_by_quality.entry(q).or_default();
            entry.0 += record.kept as u32;
            entry.1 += 1;
        }
    }
    let rate = |q: u32| kept_by_quality[&q].0 as f64 / kept_by_quality[&q].1 as f64;
    assert!(rate(4) > rate(0) + 0.3, "careful prose kept at {:.2}, careless at {:.2}", rate(4), rate(0));

    // The fitted weights are written once and read back: a rerun ranks alike.
    let weights = join(&join(&out, "score"), "dsir/all.json");
    assert!(Path::new(&weights).exists(), "{weights}");
    let again = select(&ctx, &sources, RankerSpec::Dsir(dsir), CutPolicy::Group, &out).await;
    assert_eq!(again.samples, manifest.samples);
}

/// Perplexity under the tiny random-weight model: the ranking means nothing, so the test checks
/// what holds whatever the weights (the budget, the cut falling between the kept and the dropped
/// records' mean log-probabilities, the same selection on a rerun); `models.rs` checks the
/// log-probabilities themselves against one forward pass.
#[cfg(feature = "llm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perplexity_keeps_the_records_its_reference_model_finds_most_predictable() {
    let tmp = tempfile::tempdir().unwrap();
    let (sources, _) = generate_records(tmp.path(), 12);
    let ctx = context(&Default::default(), "w", tmp.path());
    let model = ModelSpec::Local { uri: common::tiny_model("qwen3-tiny"), gguf_files: vec![], max_num_seqs: Some(4) };
    let mut spec = PerplexitySpec::new(model);
    spec.max_tokens = 64;
    let out = |name: &str| tmp.path().join(name).display().to_string();
    let manifest = select(&ctx, &sources, RankerSpec::Perplexity(spec.clone()), CutPolicy::Group, &out("a")).await;
    assert!((share(&manifest.total) - 0.5).abs() < 0.05, "the budget: {:?}", manifest.total);
    let sample = &manifest.samples["all"];
    assert_eq!(sample.len(), 72, "every record scored");
    let floor = scorer_runner::rankers::perplexity::FLOOR as f32;
    assert!(sample.iter().all(|r| (floor..0.0).contains(&r.aggregate)), "mean log-probabilities: {sample:?}");
    let lowest_kept = sample.iter().filter(|r| r.kept).map(|r| r.aggregate).fold(f32::INFINITY, f32::min);
    let highest_dropped = sample.iter().filter(|r| !r.kept).map(|r| r.aggregate).fold(f32::NEG_INFINITY, f32::max);
    // Within one histogram bin (20 nats over 10,000 bins) the seeded draw decides.
    assert!(lowest_kept > highest_dropped - 0.002, "kept from {lowest_kept}, dropped up to {highest_dropped}");

    let again = select(&ctx, &sources, RankerSpec::Perplexity(spec), CutPolicy::Group, &out("b")).await;
    assert_eq!(again.samples, manifest.samples, "the same selection on a rerun");
}

/// A shard rewritten in place after scoring, with its size and modification time unchanged (so
/// its score units still match it), is refused by select rather than cut by other records' scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_refuses_a_shard_rewritten_in_place_since_it_was_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let (sources, _) = generate(tmp.path());
    let ctx = context(&Default::default(), "w", tmp.path());
    let out = tmp.path().join("run").display().to_string();
    let group = ScoreGroup { name: "all".into(), sources: sources.to_vec(), ranker: RankerSpec::Random };
    let mut score = ScorePlan::new(vec![group]);
    score.output = join(&out, "score");
    steps::score::run(&ctx, &score).await.expect("score");
    let mut threshold = ThresholdPlan::new(vec![score.output.clone()], 0.5);
    threshold.output = join(&out, "threshold");
    steps::threshold::run(&ctx, &threshold).await.expect("threshold");

    // Swap the first two records of a JSONL shard: same bytes, same size, same mtime.
    let shard = std::fs::read_dir(tmp.path().join("corpus/web")).unwrap().next().unwrap().unwrap().path();
    let modified = std::fs::metadata(&shard).unwrap().modified().unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    let mut lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    lines.swap(0, 1);
    std::fs::write(&shard, lines.concat()).unwrap();
    std::fs::File::options().write(true).open(&shard).unwrap().set_modified(modified).unwrap();

    let groups = vec![GroupSources { name: "all".into(), sources: sources.to_vec() }];
    let mut select = SelectPlan::new(groups, score.output.clone(), threshold.output.clone());
    select.output = join(&out, "select");
    let error = steps::select::run(&ctx, &select).await.unwrap_err().to_string();
    assert!(error.contains("record 0 is not the record its score row was computed for"), "{error}");
}
