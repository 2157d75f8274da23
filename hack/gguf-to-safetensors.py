#!/usr/bin/env python3
"""gguf-to-safetensors.py GGUF OUT_DIR

Turns a llama-architecture GGUF file with a byte-level BPE (gpt2) tokenizer into the Hugging Face
layout that mistral.rs loads as a plain model directory: F32 `model.safetensors`, `config.json`,
`tokenizer.json`, `tokenizer_config.json` (with the chat template) and
`generation_config.json`.

Why: on CPU, candle's quantised dot products and F16 conversions cost more than the weights'
size saves for a model this small, and a GGUF folder has no `tokenizer.json`, which record
truncation and token budgets need. The weights are dequantised once, here.

The GGUF writer permutes the rows of the query and key projections for its rotary layout; they
are permuted back, as the Hugging Face loader does. The pre-tokenizer is the one llama.cpp calls
`smollm` (digits split one by one, then byte-level BPE): others are refused rather than guessed.
"""

import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
}

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"gguf-to-safetensors: {key} is missing from the GGUF metadata")
        return default
    return f.contents()


def unpermute(w, heads):
    """The inverse of the GGUF writer's rotary permutation of a projection's rows."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def weights(reader, heads, kv_heads):
    out = {}
    for t in reader.tensors:
        # GGUF lists dimensions fastest first; numpy wants them slowest first.
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(list(reversed([int(d) for d in t.shape])))
        w = np.ascontiguousarray(w, dtype=np.float32)
        parts = t.name.split(".")
        if parts[-1] != "weight":
            sys.exit(f"gguf-to-safetensors: {t.name} is not a weight this script converts")
        if parts[0] == "blk":
            layer, kind = parts[1], parts[2]
            if kind not in LAYER_NAMES:
                sys.exit(f"gguf-to-safetensors: unknown tensor {t.name}")
            if kind == "attn_q":
                w = unpermute(w, heads)
            elif kind == "attn_k":
                w = unpermute(w, kv_heads)
            out[f"model.layers.{layer}.{LAYER_NAMES[kind]}.weight"] = w
        elif t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif t.name == "output.weight":
            out["lm_head.weight"] = w
        else:
            sys.exit(f"gguf-to-safetensors: unknown tensor {t.name}")
    return out


def tokenizer(reader):
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("gguf-to-safetensors: only byte-level BPE (gpt2) tokenizers are converted")
    pre = field(reader, "tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        sys.exit(f"gguf-to-safetensors: pre-tokenizer {pre!r} is not one this script knows")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Token type 1 is a normal token; the others (control, user-defined) are special.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k != 1])
    return tok, tokens


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gguf-to-safetensors.py GGUF OUT_DIR")
    src, out = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(src)
    if field(reader, "general.architecture") != "llama":
        sys.exit("gguf-to-safetensors: only the llama architecture is converted")
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv", heads))
    tensors = weights(reader, heads, kv_heads)
    tok, tokens = tokenizer(reader)
    bos = int(field(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
    pad = int(field(reader, "tokenizer.ggml.padding_token_id", eos))
    hidden = int(field(reader, "llama.embedding_length"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "rms_norm_eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "vocab_size": len(tokens),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "pad_token": tokens[pad],
        "unk_token": tokens[int(field(reader, "tokenizer.ggml.unknown_token_id", 0))],
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    tok.save(os.path.join(out, "tokenizer.json"))
    for name, body in [
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("generation_config.json", {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}),
    ]:
        with open(os.path.join(out, name), "w") as f:
            json.dump(body, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
