import math

import pytest

from muxplan.catalog import get_gpu, get_model, weight_bytes
from muxplan.files import InputError, save_contract
from muxplan.schema import Profile, ProfilePoint
from profiler.cost_model import load_cost_model
from profiler.memory import kv_bytes_per_token_per_gpu, kv_capacity_bytes, reserve_bytes, weight_bytes_per_gpu
from profiler.roofline import RooflineCostModel, shipped_params
from profiler.table import TableCostModel, load_profiles
from tests.helpers import run_cli, shared_dir

A100 = get_gpu("A100-80GB")
L7 = get_model("llama-7b")


def tiny_profile(**kw) -> Profile:
    pts = [ProfilePoint(phase="decode", tp=1, sm_pct=sm, batch=b, tokens=t, latency_ms=ms)
           for sm, scale in ((50, 1.2), (100, 1.0)) for b, t, ms in ((1, 128, 10.0), (1, 512, 12.0), (8, 128, 14.0), (8, 512, 20.0))
           for ms in [ms * scale]]
    return Profile(gpu="A100-80GB", model="llama-7b", points=pts, **kw)


def test_table_exact_at_points_and_monotone_between():
    cm = TableCostModel([tiny_profile()], extrapolate=False)
    assert cm.decode_ms(L7, A100, 1, 100, 8, 512) == pytest.approx(20.0)
    assert cm.decode_ms(L7, A100, 1, 50, 1, 128) == pytest.approx(12.0)
    # log-linear halfway: geometric mean of neighbours
    assert cm.decode_ms(L7, A100, 1, 100, 1, 256) == pytest.approx(math.sqrt(10.0 * 12.0))
    values = [cm.decode_ms(L7, A100, 1, 100, b, 300) for b in (1, 2, 3, 4, 5, 6, 7, 8)]
    assert values == sorted(values)
    assert cm.decode_ms(L7, A100, 1, 75, 8, 512) == pytest.approx((20.0 + 24.0) / 2)


def test_table_out_of_range_raises_or_extrapolates():
    strict = TableCostModel([tiny_profile()], extrapolate=False)
    with pytest.raises(InputError, match="batch: 16 is outside the measured range 1..8"):
        strict.decode_ms(L7, A100, 1, 100, 16, 128)
    with pytest.raises(InputError, match="tp=2 not measured"):
        strict.decode_ms(L7, A100, 2, 100, 1, 128)
    loose = TableCostModel([tiny_profile()], extrapolate=True)
    slope = math.log(14.0 / 10.0) / math.log(8)
    assert loose.decode_ms(L7, A100, 1, 100, 16, 128) == pytest.approx(14.0 * 2**slope)


def test_roofline_sanity():
    cm = RooflineCostModel()
    decode_1 = cm.decode_ms(L7, A100, 1, 100, 1, 128)
    assert decode_1 >= weight_bytes(L7) / A100.hbm_bytes_per_s * 1e3  # bandwidth-bound floor
    big = cm.prefill_ms(L7, A100, 1, 100, 64, 512)
    flops_ms = 64 * 512 * 2 * 6.5e9 / A100.peak_bf16_flops * 1e3
    assert big >= flops_ms and big < 3 * flops_ms  # compute-bound
    half = cm.prefill_ms(L7, A100, 1, 50, 64, 512)
    assert half / big == pytest.approx(2.0, rel=0.15)
    d50, d100 = cm.decode_ms(L7, A100, 1, 50, 32, 256), cm.decode_ms(L7, A100, 1, 100, 32, 256)
    assert d50 / d100 < 1.2
    assert cm.decode_ms(L7, A100, 1, 30, 32, 256) > d50
    # TP halves the work but adds communication
    assert cm.prefill_ms(L7, A100, 2, 100, 64, 512) < 0.7 * big


def test_memory_model_hand_checked():
    assert weight_bytes_per_gpu(L7, 1) == 13476831232
    assert kv_bytes_per_token_per_gpu(L7, 2) == 262144
    l70 = get_model("llama-2-70b")
    assert weight_bytes_per_gpu(l70, 4) == 137953296384 // 4
    assert kv_bytes_per_token_per_gpu(l70, 8) == 40960  # 8 KV heads over 8 GPUs: one head each
    assert kv_bytes_per_token_per_gpu(l70, 16) == 40960  # more GPUs than KV heads: replicated
    reserve = reserve_bytes(L7, 1)
    assert reserve == 768 * 2**20 + 2048 * max(4096 * 4, 2 * 11008 + 4096) * 2 + 256 * 32000 * 4
    assert kv_capacity_bytes([L7], A100, 1) == int(A100.memory_bytes * 0.95) - 13476831232 - reserve


def test_calibrated_a100_meets_targets():
    from profiler.calibrate import error_table
    from profiler.table import reference_to_profiles

    profiles = reference_to_profiles(shared_dir() / "reference" / "a100_llama_7b_13b_profile.json")
    rows = {r.group: r.mape_pct for r in error_table(shipped_params("A100-80GB"), profiles)}
    assert rows["decode"] <= 15 and rows["prefill"] <= 15


def test_load_cost_model_prefers_profile_and_falls_back(tmp_path):
    save_contract(tmp_path / "p.json", tiny_profile())
    cm = load_cost_model(profile=tmp_path)
    assert cm.decode_ms(L7, A100, 1, 100, 8, 512) == pytest.approx(20.0)
    l13 = get_model("llama-13b")
    assert cm.decode_ms(l13, A100, 1, 100, 8, 512) == pytest.approx(RooflineCostModel().decode_ms(l13, A100, 1, 100, 8, 512))


def test_bad_profiles_name_file_and_field(tmp_path):
    bad = tmp_path / "p.json"
    data = tiny_profile().model_dump()
    data["points"][2]["latency_ms"] = -3
    import json

    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"p.json: points\[2\].latency_ms: Input should be greater than 0"):
        load_profiles(bad)
    data["points"] = []
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"points: List should have at least 1 item"):
        load_profiles(bad)
    save_contract(bad, tiny_profile())
    proc = run_cli("profile", "check", "--reference", bad, "--gpu", "H100-SXM")
    assert proc.returncode == 2 and f"{bad}: gpu: profile is for 'A100-80GB', not 'H100-SXM'" in proc.stderr


def test_profile_show_renders_tables_and_plot(tmp_path):
    save_contract(tmp_path / "p.json", tiny_profile())
    proc = run_cli("profile", "show", tmp_path / "p.json", "--plot", tmp_path / "p.png", check=True)
    assert "tp=1, sm=50%" in proc.stdout and "24.00" in proc.stdout and "decode ms" in proc.stdout
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
