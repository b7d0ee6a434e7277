"""The workload generator's statistics, determinism, and the shared loader."""
import json

import numpy as np
import pytest

from muxplan.files import InputError, load_contract
from muxplan.schema import Arrivals, LengthDist, Workload
from muxplan.summary import summarize
from muxplan.workload import (
    arrival_times, load_workload, materialise_requests, parse_model_counts, sample_lengths, served_names, synthesize,
)
from tests.helpers import ROOT, run_cli

PAPER = "llama-7b:12,llama-13b:4,llama-30b:2,llama-65b:1"


def test_parse_counts_and_served_names():
    assert parse_model_counts("llama-7b:2, mistral-7b") == [("llama-7b", 2), ("mistral-7b", 1)]
    assert served_names([("llama-7b", 2), ("mistral-7b", 1)]) == [
        ("llama-7b-0", "llama-7b"), ("llama-7b-1", "llama-7b"), ("mistral-7b", "mistral-7b")]
    for bad in ("llama-7b:0", "llama-7b:00", "llama-7b:x", "llama-7b:-1"):
        with pytest.raises(InputError, match="count must be a positive integer"):
            parse_model_counts(bad)
    with pytest.raises(InputError, match="served names repeat \\(llama-7b\\)"):
        served_names(parse_model_counts("llama-7b,llama-7b"))
    with pytest.raises(InputError, match="^--models: no models given$"):
        parse_model_counts(" , ")


def test_size_order_gives_largest_model_least_traffic():
    w = synthesize(parse_model_counts(PAPER), 0.9, 40.0, materialise=False)
    rates = {m.name: m.rate_rps for m in w.models}
    assert [m.name for m in w.models][:2] == ["llama-7b-0", "llama-7b-1"] and len(rates) == 19
    assert rates["llama-7b-0"] == 40.0
    assert rates["llama-7b-11"] == pytest.approx(40.0 * 12**-0.9)
    assert rates["llama-13b-0"] == pytest.approx(40.0 * 13**-0.9)
    assert rates["llama-30b-1"] == pytest.approx(40.0 * 18**-0.9)
    assert rates["llama-65b"] == pytest.approx(40.0 * 19**-0.9) == min(rates.values())
    shuffled = synthesize(parse_model_counts(PAPER), 0.9, 40.0, order="shuffled", seed=3, materialise=False)
    assert sorted(m.rate_rps for m in shuffled.models) == pytest.approx(sorted(rates.values()))
    assert [m.rate_rps for m in shuffled.models] != [m.rate_rps for m in w.models]
    again = synthesize(parse_model_counts(PAPER), 0.9, 40.0, order="shuffled", seed=3, materialise=False)
    assert again == shuffled


def test_explicit_order_total_rate_and_scale():
    counts = parse_model_counts("llama-7b:2,llama-65b")
    w = synthesize(counts, 1.0, None, total_rate=11.0, rate_scale=2.0, order="explicit",
                   explicit_order=["llama-65b", "llama-7b-1", "llama-7b-0"], materialise=False)
    assert {m.name: m.rate_rps for m in w.models} == pytest.approx({"llama-65b": 12.0, "llama-7b-1": 6.0, "llama-7b-0": 4.0})
    with pytest.raises(InputError, match="^--order: must list every served model once"):
        synthesize(counts, 1.0, order="explicit", explicit_order=["llama-65b"])
    with pytest.raises(InputError, match="^--popularity-order: 'random' is not one of size, shuffled, explicit$"):
        synthesize(counts, 1.0, order="random")


@pytest.mark.parametrize("arrivals", [Arrivals(process="poisson"), Arrivals(process="gamma", cv=2.0), Arrivals(process="gamma", cv=0.5)])
def test_mean_rate_within_five_percent_and_cv_within_ten(arrivals):
    w = synthesize(parse_model_counts("llama-7b:3"), 0.0, 20.0, duration_s=2000, seed=5, arrivals=arrivals)
    summary = summarize(w)
    for s in summary.models:
        assert s.rate_rps == pytest.approx(20.0, rel=0.05)
        assert s.arrival_cv == pytest.approx(arrivals.cv, rel=0.1)
    assert summary.total.num_requests == len(w.requests)


def test_arrival_times_cover_window_for_tiny_rates():
    rng = np.random.default_rng(0)
    t = arrival_times(0.01, 1e5, Arrivals(process="gamma", cv=3.0), rng)
    assert t.size > 0 and t.max() < 1e5 and np.all(np.diff(t) >= 0)
    assert arrival_times(0.0, 100, Arrivals(), rng).size == 0


@pytest.mark.parametrize("alpha", [0.9, 1.3])
def test_popularity_follows_alpha(alpha):
    w = synthesize(parse_model_counts("llama-7b:10"), alpha, 50.0, duration_s=3000, seed=7)
    counts = [s.num_requests for s in summarize(w).models]
    assert counts == sorted(counts, reverse=True)
    slope = np.polyfit(np.log(np.arange(1, 11)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-alpha, abs=0.05)


def test_materialise_is_deterministic_and_matches_embedded():
    spec = synthesize(parse_model_counts("llama-7b:2"), 1.0, 5.0, duration_s=50, seed=11, materialise=False)
    a, b = materialise_requests(spec), materialise_requests(spec)
    assert a == b and len(a) > 300
    assert materialise_requests(spec.model_copy(update={"seed": 12})) != a
    full = synthesize(parse_model_counts("llama-7b:2"), 1.0, 5.0, duration_s=50, seed=11)
    assert full.requests == a and materialise_requests(full) == a
    assert all(0 <= r.arrival_s < 50 for r in a) and a == sorted(a, key=lambda r: r.arrival_s)
    assert {r.model for r in a} == {"llama-7b-0", "llama-7b-1"}


def test_cli_synth_is_deterministic(tmp_path):
    args = ["workload", "synth", "--models", "llama-7b:2,llama-13b", "--top-rate", "3", "--duration", "30", "--seed", "4"]
    run_cli(*args, "--out", tmp_path / "a.json", check=True)
    run_cli(*args, "--out", tmp_path / "b.json", check=True)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    run_cli(*args[:-1], "5", "--out", tmp_path / "c.json", check=True)
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_length_distributions():
    rng = np.random.default_rng(0)
    values = sample_lengths(LengthDist(mean=300, sigma=0.6, high=100000), 200000, rng)
    assert values.mean() == pytest.approx(300, rel=0.02) and values.min() >= 1
    clipped = sample_lengths(LengthDist(mean=300, sigma=2.0, low=10, high=500), 10000, rng)
    assert clipped.min() == 10 and clipped.max() == 500
    assert set(sample_lengths(LengthDist(kind="fixed", mean=7.4), 5, rng)) == {7}
    uniform = sample_lengths(LengthDist(kind="uniform", low=3, high=5), 3000, rng)
    assert set(uniform) == {3, 4, 5}
    emp = sample_lengths(LengthDist(kind="empirical", values=[2, 9], high=9), 1000, rng)
    assert set(emp) == {2, 9}


def test_cli_synth_rates_and_spec_only(tmp_path):
    out = tmp_path / "W.json"
    run_cli("workload", "synth", "--models", "llama-7b:2,llama-13b:1", "--alpha", "1.0", "--top-rate", "4", "--duration", "100",
            "--seed", "1", "--arrivals", "gamma", "--cv", "2", "--slo-scale", "8", "--out", out, check=True)
    w = load_contract(out, Workload)
    assert [m.rate_rps for m in w.models] == [4.0, 2.0, 4.0 / 3]
    assert (w.arrivals.process, w.arrivals.cv, w.seed, w.duration_s) == ("gamma", 2.0, 1, 100.0)
    assert w.models[0].slo.scale == 8.0 and len(w.requests) > 500
    spec = tmp_path / "spec.yaml"
    proc = run_cli("workload", "synth", "--models", "llama-7b:2,llama-13b:1", "--alpha", "1.0", "--top-rate", "4", "--duration",
                   "100", "--seed", "1", "--arrivals", "gamma", "--cv", "2", "--slo-scale", "8", "--spec-only", "--out", spec, check=True)
    assert proc.stdout.strip() == f"wrote {spec}: 3 models, spec only"
    loaded = load_workload(spec)
    assert loaded.requests is None and materialise_requests(loaded) == w.requests


def test_load_workload_from_trace_measures_rates_and_lengths(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("arrival_s,model,prompt_tokens,output_tokens\n"
                 "0,llama-7b-10,5,1\n1,llama-7b-2,6,2\n2,llama-7b-2,8,3\n4,llama-65b,9,4\n")
    w = load_workload(t)
    assert [(m.name, m.model) for m in w.models] == [("llama-7b-2", "llama-7b"), ("llama-7b-10", "llama-7b"), ("llama-65b", "llama-65b")]
    assert [m.rate_rps for m in w.models] == [0.5, 0.25, 0.25] and w.duration_s == 4.0
    assert w.models[0].prompt_tokens.kind == "empirical" and w.models[0].prompt_tokens.values == [6, 8]
    assert w.models[0].prompt_tokens.mean == 7.0 and len(w.requests) == 4
    t.write_text("arrival_s,model,prompt_tokens,output_tokens\n0,llama-7b,5,1\n1,gpt-5-3,6,2\n")
    with pytest.raises(InputError, match=f"^{t}: rows\\[1\\].model: model 'gpt-5-3' is not a catalog model .*known: llama-7b"):
        load_workload(t)


def test_load_workload_checks_models_and_resolves_config_paths(tmp_path):
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "intermediate_size": 128, "vocab_size": 500}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    path = tmp_path / "w.json"
    models = [{"name": "a", "model": "tiny", "rate_rps": 1.0}, {"name": "b", "model": "gpt-5", "rate_rps": 1.0}]
    path.write_text(json.dumps({"schema_version": 1, "models": models}))
    with pytest.raises(InputError) as err:
        load_workload(path)
    assert err.value.problems[0].startswith(f"{path}: models[1].model: unknown model 'gpt-5'; known: llama-7b, llama-13b")
    path.write_text(json.dumps({"schema_version": 1, "models": models[:1]}))
    assert load_workload(path).models[0].model == str(tmp_path / "tiny")


def test_bundled_examples_load():
    from muxplan.cluster import load_cluster

    w = load_workload(ROOT / "examples/paper19/workload.yaml")
    assert len(w.models) == 19 and w.requests is None and w.models[0].rate_rps == 40.0
    assert w.models[-1].name == "llama-65b" and w.models[-1].rate_rps == pytest.approx(40.0 * 19**-0.9)
    assert (w.duration_s, w.arrivals.process, w.models[0].prompt_tokens.mean, w.models[0].output_tokens.mean) == (240.0, "poisson", 161, 338)
    assert load_cluster(ROOT / "examples/paper19/cluster.yaml").num_gpus == 32
    assert [n.gpu for n in load_cluster(ROOT / "examples/small/cluster.yaml").nodes] == ["A100-80GB"]
    assert load_cluster(ROOT / "examples/small/cluster.yaml").num_gpus == 4
    small = load_workload(ROOT / "examples/small/workload.yaml")
    assert len(small.models) == 5 and len({m.model for m in small.models}) == 5


@pytest.mark.parametrize("example", ["paper19", "small"])
def test_bundled_workloads_are_what_their_readme_command_makes(tmp_path, example):
    readme = (ROOT / "examples" / example / "README.md").read_text()
    command = readme.split("`muxplan ")[-1].split("`")[0].split()
    out = tmp_path / "w.yaml"
    run_cli(*command[:-1], out, check=True)
    made, bundled = load_workload(out), load_workload(ROOT / "examples" / example / "workload.yaml")
    # rates are powers computed by numpy, whose last bit may differ between builds
    assert [m.rate_rps for m in made.models] == pytest.approx([m.rate_rps for m in bundled.models], rel=1e-12)
    def without_rates(w):
        return w.model_copy(update={"source": "", "models": [m.model_copy(update={"rate_rps": 0.0}) for m in w.models]})

    assert without_rates(made) == without_rates(bundled)
