"""bench/gpu/validate.py end to end on CPU with tiny models (how the GPU script is tested before a GPU run)."""
import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow
pytest.importorskip("torch")


def test_validate_script_runs_every_step_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu/validate.py", str(tmp_path), "--tiny", "--duration", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "validate.json").read_text())
    assert report["environment"]["device"] == "cpu"
    # 3 batches x 2 token counts x 2 phases at 100% SMs, every point measured
    assert {name: row["points"] for name, row in report["profiles"].items()} == {"tiny-0": 12, "tiny-1": 12, "tiny-2": 12}
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == ["tiny-0.json", "tiny-1.json", "tiny-2.json"]
    assert set(report["analytic"]["mape_pct"]) >= {"decode", "prefill"}
    assert [r["batch"] for r in report["speed"]["decode"]] == [1, 4, 16]
    assert all(0 < r["fraction_of_roofline"] for r in report["speed"]["decode"])
    att = report["attention"]
    assert att["max_abs_diff"] < 1e-4 and att["paged_ms"] > 0 and att["reference_ms"] > 0
    runs = report["multiplexing"]["runs"]
    assert sorted(runs) == ["adbs", "static-split", "temporal"]
    for run in runs.values():
        overall = run["fidelity"][0]
        assert overall["model"] == "all"
        assert overall["engine"]["num_requests"] == report["multiplexing"]["num_requests"]  # nothing lost
        assert set(overall["error_pct"]) == {"throughput", "ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90"}
    assert "3 models on one device" in proc.stdout
