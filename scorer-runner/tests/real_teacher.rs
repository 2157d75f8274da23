//! The teacher loop with a real instruct model, SmolLM2-135M-Instruct (`hack/smollm2.sh` fetches
//! and converts it; `$MIRA_SMOLLM2` names the directory), on CPU: discover -> label -> distill.
//! Unlike the tiny random-weight models, this one answers in language and ends its replies as a
//! chat model does, so the test can ask what a lab would: that every constrained reply came back
//! whole (none cut at its token cap, none asked for again in vain), that proposals, guides and
//! rationales are text, and that the teacher read records cut with its own tokenizer.
#![cfg(feature = "llm")]

mod common;

use common::{context, root, Backend};
use mira_testkit::synth::{self, Kind, SynthSource};
use scorer_runner::plan::*;
use scorer_runner::steps;
use scorer_runner::storage::join;

/// The teacher's context cut: short, so that most records are cut and the cut can be checked.
const MAX_RECORD_TOKENS: usize = 64;

fn smollm2() -> ModelSpec {
    let dir = std::env::var("MIRA_SMOLLM2")
        .expect("MIRA_SMOLLM2 is not set: run `hack/smollm2.sh` and point it at the directory it prints");
    // One sequence at a time: on CPU batching decodes no faster, and it keeps replies independent
    // of which records happen to share a batch.
    ModelSpec::Local { uri: dir, gguf_files: vec![], max_num_seqs: Some(1) }
}

fn tokens(tokenizer: &tokenizers::Tokenizer, text: &str) -> usize {
    tokenizer.encode(text, false).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_teacher_discovers_labels_and_distills_in_words() {
    std::env::set_var("HF_HOME", tempfile::tempdir().unwrap().keep());
    let ModelSpec::Local { uri: model_dir, .. } = smollm2() else { unreachable!() };
    let tokenizer = tokenizers::Tokenizer::from_file(format!("{model_dir}/tokenizer.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (config, base) = root(Backend::Local, "real-teacher", tmp.path()).await;
    let ctx = context(&config, "w1", tmp.path());
    let local_dir = tmp.path().join("corpus");
    let mut sources = Vec::new();
    for (name, kind) in [("prose", Kind::Prose), ("code", Kind::Code)] {
        let s = SynthSource {
            name: name.into(),
            kind,
            format: Format::Jsonl,
            shards: 1,
            records_per_shard: 8,
            malformed_every: None,
        };
        synth::write_source(&local_dir, &s, 5).unwrap();
        sources.push(Source {
            name: name.into(),
            uri: join(&base, &format!("corpus/{name}")),
            format: None,
            text: TextSpec::default(),
            shard_fraction: None,
        });
    }
    common::upload_dir(&ctx.storage, &local_dir, &join(&base, "corpus")).await;
    let groups = vec![GroupSources { name: "all".into(), sources: sources.clone() }];
    let pass = TeacherPass { seed: 1, max_record_tokens: MAX_RECORD_TOKENS, ..TeacherPass::new(smollm2()) };
    let out = join(&base, "run");

    // Discover: every sampled record gave proposals (no reply was cut or asked for twice in
    // vain), and each anchor got a guide the teacher wrote. What a 135M model writes about
    // random words is often a loop (`1.0, 2.0, 3.0, ...`), and it moves with the sample (drawn by
    // a hash of the shards' URIs, here under a new temporary folder each run): the test asks
    // for replies that parse and say something, not for good ones.
    let started = std::time::Instant::now();
    let rubric = steps::discover::run(
        &ctx,
        &DiscoverPlan {
            storage: Default::default(),
            output: join(&out, "discover"),
            groups: groups.clone(),
            pass: pass.clone(),
            embedder: None,
            records_per_group: 3,
            dimensions_per_group: 2,
            min_support: 1,
        },
    )
    .await
    .expect("discover");
    eprintln!("discover: {:?}", started.elapsed());
    let proposals = ctx.storage.get(rubric.groups[0].proposals.as_deref().unwrap()).await.unwrap();
    let proposals: Vec<serde_json::Value> = proposals
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let records: std::collections::BTreeSet<&str> = proposals.iter().map(|p| p["record"].as_str().unwrap()).collect();
    assert_eq!(records.len(), 3, "every sampled record got proposals: {proposals:#?}");
    for p in &proposals {
        assert!(!p["name"].as_str().unwrap().trim().is_empty(), "{p}");
        assert!(!p["description"].as_str().unwrap().trim().is_empty(), "{p}");
    }
    assert!(
        proposals.iter().any(|p| p["name"].as_str().unwrap().chars().any(char::is_alphabetic)),
        "the teacher names dimensions in words: {proposals:#?}"
    );
    let dims = &rubric.groups[0].dimensions;
    for d in dims {
        eprintln!("anchor {:?}: {:?}; guide {:?}", d.dimension.id, d.dimension.description, d.dimension.guide);
    }
    assert!(!dims.is_empty() && dims.len() <= 2, "{dims:?}");
    for d in dims {
        assert!(!d.dimension.guide.trim().is_empty(), "the teacher wrote a guide: {d:?}");
    }
    let dimensions: Vec<Dimension> = dims.iter().map(|d| d.dimension.clone()).collect();

    // Label: every record scored on every dimension with a rationale, committed in units of 3,
    // each cut to the teacher's own tokens (not whitespace words).
    let started = std::time::Instant::now();
    let labels = steps::label::run(
        &ctx,
        &LabelPlan {
            storage: Default::default(),
            output: join(&out, "label"),
            groups: vec![LabelGroup { name: "all".into(), sources: sources.clone(), dimensions: dimensions.clone() }],
            rubrics: None,
            pass: pass.clone(),
            records_per_group: 6,
            records_per_unit: 3,
        },
    )
    .await
    .expect("label");
    eprintln!("label: {:?}", started.elapsed());
    assert_eq!(labels.labelled["all"], 6, "{labels:?}");
    assert_eq!(common::commits(&ctx.storage, &join(&out, "label")).await.len(), 2);
    let mut cut = 0;
    for object in ctx.storage.list(&labels.labels).await.unwrap() {
        for line in ctx.storage.get(&object.uri).await.unwrap().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let label: serde_json::Value = serde_json::from_slice(line).unwrap();
            for d in &dimensions {
                assert!((1..=5).contains(&label["scores"][&d.id].as_i64().unwrap()), "{label}");
                assert!(!label["rationales"][&d.id].as_str().unwrap().trim().is_empty(), "{label}");
            }
            let text = label["text"].as_str().unwrap();
            if tokens(&tokenizer, text) > MAX_RECORD_TOKENS {
                cut += 1;
                assert_eq!(label["truncated"]["originalTokens"], tokens(&tokenizer, text), "{label}");
                assert_eq!(label["truncated"]["keptTokens"], MAX_RECORD_TOKENS, "{label}");
            }
        }
    }
    assert!(cut > 0, "some records are longer than the teacher's cut");

    // Distill: a hashed-feature student per group, and every training record exported as SFT,
    // its prompt carrying each dimension's guide.
    let distill = steps::distill::run(
        &ctx,
        &DistillPlan {
            storage: Default::default(),
            output: join(&out, "distill"),
            groups: vec![DistillGroup {
                name: "all".into(),
                sources: vec!["prose".into(), "code".into()],
                dimensions: dimensions.clone(),
            }],
            rubrics: None,
            labels: labels.labels.clone(),
            featurizer: FeaturizerSpec::default(),
            scale: Scale::default(),
            validation_fraction: 0.34,
            split_seed: 0,
            lambdas: vec![],
            max_train_records: 100,
            mask: MaskPolicy { min_validation: 1, ..Default::default() },
            export_sft: true,
            judge: None,
            max_record_tokens: MAX_RECORD_TOKENS,
        },
    )
    .await
    .expect("distill");
    let report = &distill.students[0];
    assert_eq!(report.train_records + report.validation_records, 6, "{report:?}");
    let sft = ctx.storage.get(&join(distill.sft.as_deref().unwrap(), "all.jsonl")).await.unwrap();
    let sft = String::from_utf8(sft.to_vec()).unwrap();
    assert_eq!(sft.lines().count(), report.train_records, "{sft}");
    for d in &dimensions {
        let first_line = d.guide.trim().lines().next().unwrap().trim();
        let escaped = serde_json::to_string(first_line).unwrap();
        assert!(sft.contains(escaped.trim_matches('"')), "the guide of {} reaches the SFT prompts", d.id);
    }
}
