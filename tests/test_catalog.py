import json
import subprocess
import sys

import pytest

from muxplan.catalog import flops_per_token, get_gpu, get_model, kv_bytes_per_token, model_catalog, num_params, weight_bytes
from muxplan.cluster import load_cluster, parse_cluster_shorthand
from muxplan.files import InputError

REQUIRED_MODELS = [
    "llama-7b", "llama-13b", "llama-30b", "llama-65b", "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b",
    "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b", "mistral-7b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-14b",
    "qwen2.5-32b", "qwen2.5-72b", "mixtral-8x7b",
]


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_derived_params_within_one_percent_of_published(name):
    m = get_model(name)
    assert abs(num_params(m) / m.published_params - 1) <= 0.01


def test_catalog_holds_exactly_the_required_models():
    assert sorted(model_catalog()) == sorted(REQUIRED_MODELS)


def test_hand_checked_sizes():
    llama7 = get_model("llama-7b")
    assert kv_bytes_per_token(llama7) == 2 * 32 * 32 * 128 * 2 == 524288  # MHA, fp16
    l31 = get_model("llama-3.1-8b")
    assert kv_bytes_per_token(l31) == 2 * 32 * 8 * 128 * 2 == 131072  # GQA: 8 KV heads
    assert weight_bytes(llama7) == 6738415616 * 2
    mixtral = get_model("mixtral-8x7b")
    assert num_params(mixtral, active_only=True) == 12879925248
    # 2 x active matmul weights per token at zero context (embedding lookup is free, LM head is not)
    assert flops_per_token(llama7) == 2 * (6738415616 - 32000 * 4096 - 4096 * (2 * 32 + 1))


def test_gpus_and_cluster_shorthand():
    assert get_gpu("A100-80GB").num_sms == 108
    assert get_gpu("H100-SXM").memory_bytes == 80 * 2**30
    cluster = parse_cluster_shorthand("4x8xA100-80GB+1x4xH100-SXM")
    assert [(n.gpu, n.num_gpus) for n in cluster.nodes] == [("A100-80GB", 8)] * 4 + [("H100-SXM", 4)]
    assert cluster.num_gpus == 36
    with pytest.raises(InputError, match="unknown GPU 'B900'; known: A100-40GB"):
        load_cluster("2x8xB900")


def test_model_from_hf_config(tmp_path):
    cfg = {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 500, "tie_word_embeddings": True,
           "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = get_model(str(tmp_path))
    assert (m.family, m.head_dim, m.num_kv_heads, m.attention_bias, m.dtype) == ("qwen2", 16, 2, True, "float32")
    assert kv_bytes_per_token(m) == 2 * 2 * 2 * 16 * 4


def test_cli_unknown_model_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "muxplan", "models", "show", "gpt-9"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'gpt-9'; known: llama-7b")
    assert "Traceback" not in proc.stderr


def test_help_does_not_import_torch():
    code = "import sys; from muxplan.cli import app; assert 'torch' not in sys.modules and 'ortools' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
