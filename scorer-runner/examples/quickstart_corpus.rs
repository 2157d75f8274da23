//! Writes the small corpus of `examples/quickstart/`: three sources (web prose as JSONL, code as
//! JSONL.zst, agent traces as a `messages` array in JSONL.gz), with a few malformed lines that
//! the steps count and skip; and, given a second path, the labels its curated chain imports
//! (gzipped JSON lines).
//!
//! The labels follow a stated rule, so that the quickstart shows a real cut without a real
//! model: every record gets `signal` = 1 + its hidden quality (0..=4, the
//! share of its sentences written with care: "verified", "justified", ... against "idk",
//! "asdf", ...), moved by one in 15 % of records, and `noise` drawn uniformly from 1..=5. A
//! student can learn `signal` from the words and nothing of `noise`, so the mask keeps the
//! first and drops the second.
//!
//! `cargo run --example quickstart_corpus -- examples/quickstart/data examples/quickstart/labels.jsonl.gz`

use std::io::Write;

use mira_testkit::synth::{write_labels, write_source, Kind, SynthSource};
use scorer_runner::plan::Format;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = std::path::PathBuf::from(args.next().expect("usage: quickstart_corpus <dir> [labels.jsonl.gz]"));
    let mut records = Vec::new();
    for (name, kind, format) in [
        ("web", Kind::Prose, Format::Jsonl),
        ("code", Kind::Code, Format::JsonlZst),
        ("agent", Kind::Agent, Format::JsonlGz),
    ] {
        let source = SynthSource {
            name: name.into(),
            kind,
            format,
            shards: 2,
            records_per_shard: 60,
            malformed_every: Some(37),
        };
        let written = write_source(&out, &source, 2026).expect("write source");
        println!("{name}: {} records", written.len());
        records.extend(written);
    }
    if let Some(labels) = args.next() {
        let tmp = tempfile::NamedTempFile::new().expect("temporary file");
        write_labels(tmp.path(), &records, 1, 2026).expect("write labels");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&labels).expect("create labels"),
            flate2::Compression::best(),
        );
        gz.write_all(&std::fs::read(tmp.path()).expect("read labels")).expect("compress labels");
        gz.finish().expect("finish labels");
        println!("labels: {}", records.len());
    }
}
