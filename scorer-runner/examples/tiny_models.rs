//! Writes tiny random-weight models that mistral.rs loads on CPU in a fraction of a second, for
//! tests, examples and benchmarks:
//!
//! - `<out>/qwen3-tiny/`: a `Qwen3ForCausalLM` (hidden 64, 2 layers, 4 heads, 2 KV heads, head
//!   dim 16, intermediate 128, tied embeddings, float32), a byte-level BPE tokenizer with the
//!   ChatML special tokens, a ChatML chat template and `<|im_end|>`/`<|endoftext|>` as EOS.
//! - `<out>/qwen3-embedding-tiny/`: the same shape in the Qwen3-Embedding layout (weights without
//!   the `model.` prefix, sentence-transformers `modules.json` with last-token pooling and
//!   normalisation, a tokenizer that appends `<|endoftext|>`).
//!
//! The weights are random (seeded ChaCha, std 0.02, norms 1): replies are valid under a grammar
//! but meaningless. Every run writes the same bytes. Run:
//!
//! ```text
//! cargo run -p scorer-runner --example tiny_models -- <out-dir>
//! ```
//!
//! `hack/tiny-models.sh <out-dir>` runs this only when the output is missing or stale. The tests
//! include this file as a module and call [`generate`] directly.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// Bump when the output changes for a reason the source hash would not show.
pub const GENERATOR_VERSION: u32 = 1;

pub const CHAT_DIR: &str = "qwen3-tiny";
pub const EMBEDDING_DIR: &str = "qwen3-embedding-tiny";

pub const HIDDEN: usize = 64;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 16;
pub const INTERMEDIATE: usize = 128;
pub const MAX_POSITIONS: usize = 4096;

/// Target vocabulary of the BPE trainer (special tokens and the 256 byte symbols included); the
/// corpus decides the exact size.
const VOCAB_TARGET: usize = 1536;
const SEED: u64 = 0x4d49_5241_0000_0001;
const STD: f32 = 0.02;

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

const CHAT_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

fn main() {
    let out = match std::env::args_os().nth(1) {
        Some(out) => PathBuf::from(out),
        None => {
            eprintln!("usage: tiny_models <out-dir>");
            std::process::exit(2);
        }
    };
    match generate(&out) {
        Ok(dirs) => {
            for dir in dirs {
                println!("{}", dir.display());
            }
        }
        Err(e) => {
            eprintln!("tiny_models: {e}");
            std::process::exit(1);
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Writes both models under `out` (created if missing; existing files are overwritten) and
/// returns their directories: chat first, then embedding.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>, Error> {
    let tokenizer = train_tokenizer()?;
    let vocab = tokenizer.get_vocab_size(true);
    let id = |token: &str| tokenizer.token_to_id(token).ok_or_else(|| format!("token {token} missing"));
    let (eot, im_start, im_end) = (id(END_OF_TEXT)?, id(IM_START)?, id(IM_END)?);

    let chat = out.join(CHAT_DIR);
    std::fs::create_dir_all(&chat)?;
    write_json(&chat.join("config.json"), &config(vocab, eot, im_end))?;
    write_json(
        &chat.join("generation_config.json"),
        &json!({
            "bos_token_id": eot,
            "do_sample": false,
            "eos_token_id": [im_end, eot],
            "pad_token_id": eot,
            "transformers_version": "4.51.0"
        }),
    )?;
    write_json(&chat.join("tokenizer_config.json"), &tokenizer_config(eot, im_start, im_end))?;
    tokenizer.save(chat.join("tokenizer.json"), true)?;
    write_weights(&chat.join("model.safetensors"), vocab, "model.", SEED)?;

    let embedding = out.join(EMBEDDING_DIR);
    std::fs::create_dir_all(embedding.join("1_Pooling"))?;
    std::fs::create_dir_all(embedding.join("2_Normalize"))?;
    write_json(&embedding.join("config.json"), &config(vocab, eot, im_end))?;
    write_json(&embedding.join("tokenizer_config.json"), &tokenizer_config(eot, im_start, im_end))?;
    // Like Qwen3-Embedding: every input ends with <|endoftext|>, whose state last-token pooling reads.
    let mut embedding_tokenizer = tokenizer.clone();
    embedding_tokenizer.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single(format!("$A:0 {END_OF_TEXT}:0"))?
            .try_pair(format!("$A:0 {END_OF_TEXT}:0 $B:1 {END_OF_TEXT}:1"))?
            .special_tokens(vec![(END_OF_TEXT, eot)])
            .build()?,
    ));
    embedding_tokenizer.save(embedding.join("tokenizer.json"), true)?;
    write_weights(&embedding.join("model.safetensors"), vocab, "", SEED ^ 0xe5be_dd00)?;
    write_json(
        &embedding.join("modules.json"),
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]),
    )?;
    write_json(
        &embedding.join("1_Pooling/config.json"),
        &json!({
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": false,
            "pooling_mode_mean_tokens": false,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": true,
            "include_prompt": true
        }),
    )?;
    write_json(
        &embedding.join("config_sentence_transformers.json"),
        &json!({
            "prompts": {"query": "Instruct: Given a query, retrieve relevant passages\nQuery:", "document": ""},
            "default_prompt_name": null,
            "similarity_fn_name": "cosine"
        }),
    )?;
    Ok(vec![chat, embedding])
}

/// Byte-level BPE (GPT-2 split regex, NFC) trained on [`CORPUS`], with the three ChatML special
/// tokens first (ids 0, 1, 2). The trainer breaks ties by pair order, so the result is the same
/// on every run.
fn train_tokenizer() -> Result<Tokenizer, Error> {
    let specials = [END_OF_TEXT, IM_START, IM_END].map(|t| AddedToken::from(t, true)).to_vec();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(VOCAB_TARGET)
        .min_frequency(1)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, false, true)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.train(&mut trainer, CORPUS.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")))?;
    Ok(tokenizer)
}

fn config(vocab: usize, eot: u32, im_end: u32) -> Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": STD,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": LAYERS,
        "model_type": "qwen3",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-6,
        "rope_scaling": null,
        "rope_theta": 1000000.0,
        "sliding_window": null,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "transformers_version": "4.51.0",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": vocab
    })
}

fn tokenizer_config(eot: u32, im_start: u32, im_end: u32) -> Value {
    let added = |content: &str| json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true});
    let mut decoder = serde_json::Map::new();
    for (id, content) in [(eot, END_OF_TEXT), (im_start, IM_START), (im_end, IM_END)] {
        decoder.insert(id.to_string(), added(content));
    }
    json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": null,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": MAX_POSITIONS,
        "pad_token": END_OF_TEXT,
        "split_special_tokens": false,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": null
    })
}

/// Every tensor mistral.rs's Qwen3 loaders read, named with `prefix` (`model.` for the causal LM,
/// nothing for the embedding layout). Embeddings are tied, so there is no `lm_head`.
fn write_weights(path: &Path, vocab: usize, prefix: &str, seed: u64) -> Result<(), Error> {
    let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![
        (format!("{prefix}embed_tokens.weight"), vec![vocab, HIDDEN], false),
        (format!("{prefix}norm.weight"), vec![HIDDEN], true),
    ];
    for layer in 0..LAYERS {
        let l = format!("{prefix}layers.{layer}.");
        shapes.extend([
            (format!("{l}input_layernorm.weight"), vec![HIDDEN], true),
            (format!("{l}post_attention_layernorm.weight"), vec![HIDDEN], true),
            (format!("{l}self_attn.q_proj.weight"), vec![HEADS * HEAD_DIM, HIDDEN], false),
            (format!("{l}self_attn.k_proj.weight"), vec![KV_HEADS * HEAD_DIM, HIDDEN], false),
            (format!("{l}self_attn.v_proj.weight"), vec![KV_HEADS * HEAD_DIM, HIDDEN], false),
            (format!("{l}self_attn.o_proj.weight"), vec![HIDDEN, HEADS * HEAD_DIM], false),
            (format!("{l}self_attn.q_norm.weight"), vec![HEAD_DIM], true),
            (format!("{l}self_attn.k_norm.weight"), vec![HEAD_DIM], true),
            (format!("{l}mlp.gate_proj.weight"), vec![INTERMEDIATE, HIDDEN], false),
            (format!("{l}mlp.up_proj.weight"), vec![INTERMEDIATE, HIDDEN], false),
            (format!("{l}mlp.down_proj.weight"), vec![HIDDEN, INTERMEDIATE], false),
        ]);
    }
    let mut data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, shape, is_norm) in shapes {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if is_norm {
            vec![1.0; n]
        } else {
            // Each tensor has its own stream, so adding a tensor never changes the others.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
            (0..n).map(|_| normal(&mut rng) * STD).collect()
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.insert(name, (shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, (shape, bytes))| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    std::fs::write(path, safetensors::tensor::serialize(views, metadata)?)?;
    Ok(())
}

/// A standard normal sample as the sum of twelve uniforms minus six (Irwin-Hall): additions
/// only, so the bytes are the same on every platform.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    ((0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0) as f32
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn write_json(path: &Path, value: &Value) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text)?;
    Ok(())
}

/// The tokenizer's training text: plain English about data and evaluation, and some Rust,
/// Python and JSON, so that common words, identifiers and punctuation get their own tokens.
const CORPUS: &str = r#"
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs into the forest.
A good dataset is clean, diverse and well documented. We score every record and keep the best ones.
Each record has a text field, a source, a language and a date. Some records are short and some are long.
The scorer reads the text, asks a question about it, and writes a number between one and five.
A high score means the text is useful for training; a low score means it is noisy, repetitive or off topic.
We train a small model to predict the score of a large model, because the small model is much cheaper to run.
The threshold keeps the top part of the distribution. The rest of the data is dropped or kept for later.
Good writing is clear and direct. It explains one idea at a time, gives an example, and then moves on.
Bad writing repeats itself, lists keywords without meaning, or copies the same sentence again and again.
Education, science, history, mathematics, programming and medicine are common topics in web text.
The model reads a system message, a user message, and then answers as the assistant.
Please answer with a JSON object that has a score and a short reason.
The answer must be valid JSON. Do not write anything before or after the object.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
Explain why the sky is blue in simple words. Sunlight is scattered by the air, and blue light is scattered most.
The water cycle moves water from the sea to the clouds, from the clouds to the land, and back to the sea.
Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the leaves of a plant.
In 1969 people walked on the moon for the first time. The mission took eight days from launch to return.
A prime number has exactly two divisors: one and itself. The first primes are 2, 3, 5, 7, 11 and 13.
The derivative of x squared is two x. The integral of a constant is the constant times x, plus a constant.
This tutorial shows how to read a file, count the words, and print the ten most common ones.
First install the tools, then clone the repository, build the project and run the tests.
If the build fails, check the error message, read the documentation, and search the issue tracker.
The server listens on a port, accepts a request, reads the body, and sends back a response.
Storage is cheap but not free. Compress the shards, write them once, and read them many times.
Workers claim units of work, renew their lease while they run, and release it when they finish.
If a worker dies, another worker takes over its unit after the lease expires.
The results are written to a temporary file first and then renamed, so readers never see a partial file.
Tests should be fast, deterministic and independent of each other. A flaky test is worse than no test.
Use small random models in tests: they load quickly and always give the same answer for the same input.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 20 32 64 100 128 256 512 1000 1024 2048 4096 65536.
Dates and times: 2024-01-15, 2025-06-30T12:00:00Z, Monday, Tuesday, Wednesday, Thursday, Friday.
Quality, relevance, coherence, fluency, factuality, toxicity, safety, style, tone, grammar, spelling.
Score the text from 1 to 5 for educational value. Reason: the text explains a concept with examples.
Score the text from 1 to 5 for writing quality. Reason: the text is clear, concise and well organised.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: count <file>");
    let text = std::fs::read_to_string(path).unwrap();
    let mut counts = std::collections::HashMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_insert(0usize) += 1;
    }
    let mut pairs: Vec<_> = counts.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (word, count) in pairs.iter().take(10) {
        println!("{word}: {count}");
    }
}
pub struct Record {
    pub id: String,
    pub text: String,
    pub score: Option<f32>,
}
impl Record {
    pub fn new(id: &str, text: &str) -> Self {
        Record { id: id.to_string(), text: text.to_string(), score: None }
    }
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }
}
pub async fn score_all(records: &[Record], threshold: f32) -> Result<Vec<&Record>, Error> {
    let mut kept = Vec::new();
    for record in records {
        if let Some(score) = record.score {
            if score >= threshold {
                kept.push(record);
            }
        }
    }
    Ok(kept)
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Format { Jsonl, Parquet, Csv }
match format {
    Format::Jsonl => read_lines(&path)?,
    Format::Parquet => read_parquet(&path)?,
    Format::Csv => return Err(Error::Unsupported("csv".into())),
}
impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", self.id, self.text.len())
    }
}
def count_words(path):
    counts = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            for word in line.split():
                counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
class Scorer:
    def __init__(self, model, threshold=3.0):
        self.model = model
        self.threshold = threshold
    def score(self, text):
        return self.model.predict([text])[0]
    def keep(self, records):
        return [r for r in records if self.score(r["text"]) >= self.threshold]
if __name__ == "__main__":
    import sys
    for word, count in count_words(sys.argv[1]):
        print(f"{word}: {count}")
{"id": "doc-0001", "text": "The quick brown fox.", "score": 4, "reason": "clear and simple"}
{"id": "doc-0002", "text": "Buy now!!! Best price!!!", "score": 1, "reason": "spam"}
{"id": "doc-0003", "text": "A proof that there are infinitely many primes.", "score": 5, "reason": "educational"}
{"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string"}}, "required": ["score", "reason"], "additionalProperties": false}
{"name": "qwen3-tiny", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1536, "tie_word_embeddings": true}
[{"role": "system", "content": "You are a careful judge."}, {"role": "user", "content": "Rate this text."}]
SELECT id, text, score FROM records WHERE score >= 3 ORDER BY score DESC LIMIT 100;
<html><head><title>Example page</title></head><body><p>Hello, world!</p></body></html>
git clone https://example.com/repo.git && cd repo && cargo build --release && cargo test
export PATH="$HOME/bin:$PATH"; echo "done"; ls -la /tmp | grep log | wc -l
"#;
