"""The Python half of hack/bench-gpu.sh, run on the GPU machine with the image's PyTorch,
transformers and sentence-transformers.

  bench-gpu.py model TEMPLATE OUT      a Qwen3-Embedding-0.6B-shaped model with random bf16
                                       weights in OUT, laid out like the real one (weights without
                                       the `model.` prefix, sentence-transformers modules), with the
                                       tokenizer and files of TEMPLATE (the tiny embedding model)
  bench-gpu.py inputs MODEL OUT SEQ... 256 texts per sequence length, each exactly SEQ tokens
                                       long in MODEL's tokenizer (end-of-text included), as JSON
                                       lines {"tokens": SEQ, "text": ...}
  bench-gpu.py st MODEL INPUTS BATCHES MIN_SECONDS
                                       the same measurement as the Rust bench `embed`, through
                                       SentenceTransformer.encode, one JSON line per case
  bench-gpu.py peak                    the card's bf16 matrix rate, measured: 8192^3 products
  bench-gpu.py report RESULTS...       the Markdown table of all JSON lines in RESULTS
"""

import json
import os
import random
import re
import shutil
import sys
import time

# Qwen3-Embedding-0.6B's published config: the fields that set its size and its compute.
QWEN3_EMBEDDING_06B = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151669,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}


def make_model(template, out):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    shutil.copytree(template, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    with open(os.path.join(template, "config.json")) as f:
        config = json.load(f)
    config.update(QWEN3_EMBEDDING_06B)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    pooling = os.path.join(out, "1_Pooling", "config.json")
    with open(pooling) as f:
        pool = json.load(f)
    pool["word_embedding_dimension"] = config["hidden_size"]
    with open(pooling, "w") as f:
        json.dump(pool, f, indent=2)

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(out)).to(dtype=torch.bfloat16)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    def layout(keys):
        return {re.sub(r"^layers\.\d+\.", "layers.N.", k) for k in keys}

    with safe_open(os.path.join(template, "model.safetensors"), "pt") as f:
        template_keys = layout(f.keys())
    if layout(state) != template_keys:
        sys.exit(f"layout differs from the template: {sorted(layout(state) ^ template_keys)[:8]}")
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    params = sum(v.numel() for v in state.values())
    print(json.dumps({"model": out, "params": params}))


def make_inputs(model, out, seqs):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    # Words that encode to one token each with their leading space (the pre-tokenizer splits at
    # spaces, so each is encoded alone), so N-1 of them and the appended end-of-text make exactly
    # N tokens; every text's length is checked below all the same.
    candidates = sorted(t[1:] for t in tok.get_vocab() if t.startswith("\u0120") and t[1:].isalpha())
    words = [w for w in candidates if len(tok.encode(" " + w).ids) == 2]
    if len(words) < 50:
        sys.exit(f"only {len(words)} one-token words in the tokenizer")
    rng = random.Random(0)
    with open(out, "w") as f:
        for seq in seqs:
            for _ in range(256):
                text = "".join(" " + rng.choice(words) for _ in range(seq - 1))
                n = len(tok.encode(text).ids)
                if n != seq:
                    sys.exit(f"a text meant to be {seq} tokens is {n}")
                f.write(json.dumps({"tokens": seq, "text": text}) + "\n")


def measure_st(model_dir, inputs, batches, min_seconds):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cuda", model_kwargs={"dtype": torch.bfloat16})
    model.max_seq_length = 4096
    by_length = {}
    with open(inputs) as f:
        for line in f:
            v = json.loads(line)
            by_length.setdefault(v["tokens"], []).append(v["text"])
    attn = getattr(model[0].auto_model.config, "_attn_implementation", "?")
    for seq, texts in sorted(by_length.items()):
        for batch in batches:
            chunk = [texts[i % len(texts)] for i in range(batch)]
            torch.cuda.reset_peak_memory_stats()
            try:

                def run():
                    out = model.encode(chunk, batch_size=batch, convert_to_tensor=True, normalize_embeddings=True)
                    torch.cuda.synchronize()
                    assert out.shape[0] == batch

                run()  # warm-up
                started, runs = time.perf_counter(), 0
                while runs < 2 or time.perf_counter() - started < min_seconds:
                    run()
                    runs += 1
                seconds = time.perf_counter() - started
                records = runs * batch
                line = {
                    "impl": "sentence-transformers", "seq": seq, "batch": batch, "records": records,
                    "seconds": seconds, "records_per_s": records / seconds, "tokens_per_s": records * seq / seconds,
                    "peak_torch_gib": torch.cuda.max_memory_allocated() / 2**30, "attention": attn,
                }
            except torch.OutOfMemoryError as e:
                line = {"impl": "sentence-transformers", "seq": seq, "batch": batch, "error": str(e)[:200]}
                torch.cuda.empty_cache()
            print(json.dumps(line), flush=True)


def peak():
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 10
    print(json.dumps({"peak_bf16_tflops": 2 * 8192**3 / seconds / 1e12, "card": torch.cuda.get_device_name()}))


def report(paths):
    rows, meta = {}, {}
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                v = json.loads(line)
                if "impl" in v:
                    rows[(v["seq"], v["batch"], v["impl"])] = v
                else:
                    meta.update(v)
    params, measured = meta["params"], meta["peak_bf16_tflops"]
    datasheet = 989.0  # dense bf16, the vendor's datasheet for the H100/H200 SXM

    def cell(v, key, fmt):
        return "error" if v is None or "error" in v else fmt.format(v[key])

    print(f"{meta.get('card', '?')}; model {params / 1e6:.0f} M parameters (Qwen3-Embedding-0.6B layout, random "
          f"bf16 weights); bf16 matrix peak measured {measured:.0f} TFLOP/s (datasheet {datasheet:.0f}).")
    for impl, memory in (("mistral.rs", meta.get("peak_gpu_mib_mistral.rs")),
                         ("sentence-transformers", meta.get("peak_gpu_mib_sentence-transformers"))):
        if memory is not None:
            print(f"peak GPU memory, {impl}: {memory / 1024:.1f} GiB (whole run, nvidia-smi)")
    print()
    print("| seq | batch | mistral.rs tok/s | rec/s | of measured peak | sentence-transformers tok/s | rec/s "
          "| of measured peak | mistral.rs / ST |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seq, batch in sorted({(s, b) for s, b, _ in rows}):
        m, s = rows.get((seq, batch, "mistral.rs")), rows.get((seq, batch, "sentence-transformers"))

        def share(v):
            if v is None or "error" in v:
                return "-"
            return f"{2 * params * v['tokens_per_s'] / (measured * 1e12):.1%}"

        ratio = "-"
        if m and s and "error" not in m and "error" not in s:
            ratio = f"{m['tokens_per_s'] / s['tokens_per_s']:.2f}"
        print(f"| {seq} | {batch} | {cell(m, 'tokens_per_s', '{:,.0f}')} | {cell(m, 'records_per_s', '{:,.1f}')} "
              f"| {share(m)} | {cell(s, 'tokens_per_s', '{:,.0f}')} | {cell(s, 'records_per_s', '{:,.1f}')} "
              f"| {share(s)} | {ratio} |")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "model":
        make_model(*args)
    elif cmd == "inputs":
        make_inputs(args[0], args[1], [int(s) for s in args[2:]])
    elif cmd == "st":
        measure_st(args[0], args[1], [int(b) for b in args[2].split(",")], float(args[3]))
    elif cmd == "peak":
        peak()
    elif cmd == "report":
        report(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
