//! Writes the small corpus of `examples/quickstart/`: three sources (web prose as JSONL, code as
//! JSONL.zst, agent traces as a `messages` array in JSONL.gz), with a few malformed lines that
//! the steps count and skip.
//!
//! `cargo run --example quickstart_corpus -- examples/quickstart/data`

use mira_testkit::synth::{write_source, Kind, SynthSource};
use scorer_runner::plan::Format;

fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: quickstart_corpus <dir>"));
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
        let records = write_source(&out, &source, 2026).expect("write source");
        println!("{name}: {} records", records.len());
    }
}
