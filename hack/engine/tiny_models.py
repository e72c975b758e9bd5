"""Tiny models for the real-engine tests and `make demo ENGINE=vllm`: random weights from a
transformers config and a byte-level BPE tokenizer trained offline on text made here. Nothing is
downloaded.

    python hack/engine/tiny_models.py [OUT_DIR] [--only NAME ...]

Run it with the engine environment's python (hack/engine/install prints it): it needs torch,
transformers and tokenizers. Writes OUT_DIR/NAME/ (config.json, model.safetensors, tokenizer
files) for each model below and prints one JSON line per model: name, path and the KV layout
the config describes. OUT_DIR defaults to ~/.cache/llmpack-engine/tiny-models/<hash of this file>,
so a changed generator makes new models; a complete folder is reused.

The models differ in what vLLM keeps per token (its KV cache spec):
- llama-gqa: grouped-query attention, 4 query heads share 2 KV heads;
- opt: multi-head attention (KV heads = heads), learned positions, fp16 in its config;
- qwen3-head-dim: config head_dim 64 while hidden_size / heads = 32 (Qwen3 sets it explicitly);
- deepseek-mla: multi-head latent attention (DeepSeek-V2): one latent of kv_lora_rank +
  qk_rope_head_dim per layer and token instead of a key and a value per KV head;
- swa-hybrid: 3 sliding-window layers (window 200) and 1 full-attention layer (layer_types, as
  Gemma-3 and gpt-oss name theirs): vLLM keeps only the window in the sliding layers;
- swa-all: every layer keeps a 200-token window (Mistral-style, through layer_types).
A linear-attention or Mamba hybrid is not among them: vLLM's CPU build runs their kernels through
Triton, which it lacks here; tests/engine/test_kv_layout_engine.py checks those against vLLM's
spec code called directly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from pathlib import Path

VOCAB_SIZE = 1024
MAX_POSITIONS = 2048
HIDDEN = 128
LAYERS = 2
HEADS = 4
SLIDING_WINDOW = 200  # not a multiple of a block: the extra block vLLM keeps for it shows


def _corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    """Sentences of English-like words made from a fixed seed: enough for BPE to learn merges."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "el", "an", "or", "is", "the", "ing"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(600)]
    words += ["the", "a", "of", "to", "and", "in", "is", "model", "token", "memory", "GPU", "batch"]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + rng.choice([".", "?", "!", ","])
        for _ in range(lines)
    ]


def tokenizer(out: Path):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        model_max_length=MAX_POSITIONS,
    )
    # A chat template, so /v1/chat/completions works as with a real instruct model.
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(out)
    return fast


def _common(tok) -> dict:
    return {
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": False,
    }


def configs(tok) -> dict:
    """name -> transformers config of each tiny model."""
    from transformers import DeepseekV2Config, LlamaConfig, OPTConfig, Qwen3Config

    common = _common(tok)
    return {
        "llama-gqa": LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=256,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            torch_dtype="bfloat16",
            **common,
        ),
        "opt": OPTConfig(
            hidden_size=HIDDEN,
            ffn_dim=256,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            word_embed_proj_dim=HIDDEN,
            torch_dtype="float16",
            **{**common, "tie_word_embeddings": True},
        ),
        "qwen3-head-dim": Qwen3Config(
            hidden_size=HIDDEN,
            intermediate_size=256,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            head_dim=64,
            torch_dtype="bfloat16",
            **common,
        ),
        "swa-hybrid": LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            sliding_window=SLIDING_WINDOW,
            torch_dtype="bfloat16",
            **common,
        ),
        "swa-all": LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=256,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            layer_types=["sliding_attention"] * LAYERS,
            sliding_window=SLIDING_WINDOW,
            torch_dtype="bfloat16",
            **common,
        ),
        "deepseek-mla": DeepseekV2Config(
            hidden_size=HIDDEN,
            intermediate_size=256,
            moe_intermediate_size=64,
            num_hidden_layers=LAYERS,
            first_k_dense_replace=LAYERS,  # dense MLPs only: the attention is what matters here
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            num_attention_heads=HEADS,
            num_key_value_heads=HEADS,
            q_lora_rank=None,
            kv_lora_rank=64,
            qk_rope_head_dim=16,
            qk_nope_head_dim=32,
            v_head_dim=32,
            torch_dtype="bfloat16",
            **common,
        ),
    }


def build(name: str, config, tok, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    dtype = config.torch_dtype
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text(name)
    tmp.rename(out)


def default_out() -> Path:
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("LLMPACK_ENGINE_CACHE", Path.home() / ".cache" / "llmpack-engine"))
    return root / "tiny-models" / digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=None)
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    out: Path = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "_tokenizer"
    import shutil

    from transformers import PreTrainedTokenizerFast

    if not (tok_dir / "tokenizer.json").exists():
        shutil.rmtree(tok_dir, ignore_errors=True)
        tokenizer(tok_dir)
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    for name, config in configs(tok).items():
        if args.only and name not in args.only:
            continue
        path = out / name
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(path.with_name(name + ".partial"), ignore_errors=True)
            build(name, config, tok, path)
        print(json.dumps({"name": name, "path": str(path)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
