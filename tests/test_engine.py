"""The engine on CPU: logits against transformers, paged attention, block accounting, ADBS quotas, sampling."""
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from executor.engine.attention import decode_paged, decode_reference, gather_kv  # noqa: E402
from executor.engine.engine import Engine, ServedModel, served_models  # noqa: E402
from executor.engine.kv_pool import BlockManager, KvPool  # noqa: E402
from executor.engine.model import load_model  # noqa: E402
from executor.engine.runner import ModelRunner  # noqa: E402
from executor.engine.sampler import SamplingParams, sample  # noqa: E402
from executor.engine.sequence import Sequence  # noqa: E402
from muxplan.catalog import get_gpu, get_model  # noqa: E402
from muxplan.files import InputError  # noqa: E402
from tests.engine_fixtures import colocated_plan  # noqa: E402

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("name", ["llama", "qwen", "llama3"])
def test_logits_match_transformers_prefill_and_20_paged_decode_steps(tiny_models, name):
    path = tiny_models[name]
    spec = get_model(str(path))
    ours = load_model(spec, path, torch.float32, torch.device("cpu"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    pool = KvPool(256, 2 * 4 * spec.head_dim, torch.float32, torch.device("cpu"))  # 4-token blocks: many block boundaries
    blocks = BlockManager(256)
    blocks.add_model("m", spec.num_layers * spec.num_kv_heads)
    runner = ModelRunner("m", ours, pool.view(spec.head_dim), blocks, torch.device("cpu"))
    seqs = [Sequence(i, "m", [5 + i, 17, 33, 2 + i, 9, 100, 7][: 3 + 2 * i], GREEDY, 0.0) for i in range(3)]
    for s in seqs:
        blocks.allocate(s.id, "m", -(-s.num_tokens // 4))
    logits, worst = runner.logits("prefill", seqs), 0.0
    for _ in range(21):
        for i, s in enumerate(seqs):
            with torch.no_grad():
                expected = ref(torch.tensor([s.all_ids])).logits[0, -1]
            worst = max(worst, float((expected - logits[i]).abs().max()))
        for i, s in enumerate(seqs):
            s.output_ids.append(int(logits[i].argmax()))
            blocks.allocate(s.id, "m", -(-s.num_tokens // 4) - blocks.num_logical(s.id))
        logits = runner.logits("decode", seqs)
    assert worst <= 1e-4


def test_paged_decode_equals_dense_attention_over_scattered_blocks():
    gen = torch.Generator().manual_seed(0)
    num_blocks, bt, hkv, heads, d = 40, 4, 2, 6, 8
    cache = torch.randn(num_blocks, 2, bt, d, generator=gen)
    lens = [1, 5, 11]
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, dense_k, dense_v = [], [], []
    for n in lens:
        logical = -(-n // bt)
        rows = [[perm.pop() for _ in range(hkv)] for _ in range(logical)]
        tables.append(rows + [rows[0]] * (3 - logical))  # padded like the runner does
        dense_k.append(torch.stack([torch.cat([cache[rows[j][h], 0] for j in range(logical)])[:n] for h in range(hkv)]))
        dense_v.append(torch.stack([torch.cat([cache[rows[j][h], 1] for j in range(logical)])[:n] for h in range(hkv)]))
    tables = torch.tensor(tables)
    q = torch.randn(3, heads, d, generator=gen)
    ctx = torch.tensor(lens)
    paged = decode_paged(q, cache, tables, ctx)
    reference = decode_reference(q, cache, tables, ctx)
    for i, n in enumerate(lens):
        k = dense_k[i].repeat_interleave(heads // hkv, 0)
        v = dense_v[i].repeat_interleave(heads // hkv, 0)
        dense = torch.einsum("hn,hnd->hd", torch.softmax(torch.einsum("hd,hnd->hn", q[i], k) / d**0.5, -1), v)
        assert torch.allclose(paged[i], dense, atol=1e-5)
        assert torch.allclose(reference[i], dense, atol=1e-5)
    k, _ = gather_kv(cache, tables[:, :, :])
    assert k.shape == (3, hkv, 12, d)


def test_block_manager_hands_out_distinct_blocks_and_takes_them_back():
    bm = BlockManager(10)
    bm.add_model("a", 2)
    bm.add_model("b", 3)
    bm.allocate(1, "a", 2)
    bm.allocate(2, "b", 1)
    assert bm.tables[1] == [[0, 1], [2, 3]] and bm.tables[2] == [[4, 5, 6]]
    assert bm.num_free == 3 and bm.used_blocks == {"a": 4, "b": 3}
    assert not bm.can_allocate("b", 2) and bm.can_allocate("a", 1)
    with pytest.raises(RuntimeError, match="exhausted"):
        bm.allocate(3, "a", 2)
    assert bm.free(1) == 2 and bm.num_free == 7 and bm.used_blocks["a"] == 0
    bm.allocate(3, "a", 1)
    assert bm.tables[3] == [[7, 8]]  # FIFO free list: the oldest free blocks go first


def test_pool_shares_one_arena_between_head_sizes():
    pool = KvPool(8, 256, torch.float32, torch.device("cpu"))
    a, b = pool.view(32), pool.view(64)
    assert (a.shape, b.shape) == ((8, 2, 4, 32), (8, 2, 2, 64))
    a[3, 1, 0, 0] = 7.0
    assert float(b[3, 1, 0, 0]) == 7.0  # one storage: element 128 of block 3 in both views
    with pytest.raises(InputError, match="head_dim: 48"):
        pool.block_tokens(48)


def _engine(tiny_models, kv_bytes, policy="adbs", rates=None, names=("llama", "qwen", "llama3")):
    rates = rates or {n: 1.0 for n in names}
    return Engine([ServedModel(n, str(tiny_models[n]), kv_bytes, rate_rps=rates[n], max_num_seqs=64) for n in names], policy=policy)


def test_no_block_leaks_over_1000_random_requests_across_3_models_with_preemption(tiny_models):
    rng = random.Random(7)
    requests = [(rng.choice(["llama", "qwen", "llama3"]), [rng.randrange(3, 400) for _ in range(rng.randrange(1, 40))],
                 rng.randrange(1, 12)) for _ in range(1000)]
    tight = _engine(tiny_models, 96 * 1024)  # a few dozen logical blocks per model: forces preemption
    seqs = [tight.add_request(m, ids, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)) for m, ids, n in requests]
    tight.run_until_idle()
    assert tight.blocks.num_free == tight.pool.num_blocks
    assert all(v == 0 for v in tight.blocks.used_blocks.values()) and not tight.blocks.tables
    assert all(s.blocks == 0 for s in tight.scheduler.slots)
    assert tight.scheduler.used_bytes == 0 and tight.num_in_flight == 0
    assert sorted(s.id for s in tight.finished) == sorted(s.id for s in seqs)  # each exactly once
    assert sum(s.num_preemptions for s in seqs) > 0
    # recomputation after preemption reproduces what an unconstrained pool generates
    roomy = _engine(tiny_models, 64 * 2**20)
    sample_ids = range(0, 1000, 50)
    again = [roomy.add_request(requests[i][0], requests[i][1], SamplingParams(max_tokens=requests[i][2], temperature=0.0, ignore_eos=True))
             for i in sample_ids]
    roomy.run_until_idle()
    assert [seqs[i].output_ids for i in sample_ids] == [s.output_ids for s in again]
    assert all(len(s.output_ids) == n for s, (_, _, n) in zip(seqs, requests) if s.finish_reason == "length" and s.num_preemptions == 0)


def test_adbs_moves_kv_quota_to_the_hot_model(tiny_models):
    engine = _engine(tiny_models, 256 * 1024, rates={"llama": 1.0, "qwen": 1.0}, names=("llama", "qwen"))
    initial = [s.quota_bytes for s in engine.scheduler.slots]
    assert initial[0] == initial[1]  # equal rates x equal KV bytes per token
    engine.policy.adapt_period_s = 0.05
    engine._next_adapt = 0.05
    for i in range(60):  # short requests keep the hot model's quota full (several fit, the queue stays deep)
        engine.add_request("llama", [5 + i % 7] * 20, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
    engine.run_until_idle()
    final = engine.quota_history[-1][1]
    assert len(engine.quota_history) > 2
    assert final[0] > initial[0] and final[1] < initial[1]
    assert sum(final) == sum(initial)  # quota moves, the pool does not grow


def test_fcfs_and_round_robin_policies_serve_everything(tiny_models):
    for policy in ("fcfs", "round-robin", "temporal"):
        engine = _engine(tiny_models, 4 * 2**20, policy=policy, names=("llama", "qwen"))
        seqs = [engine.add_request(m, [9, 8, 7, 6], GREEDY) for m in ("llama", "qwen") * 3]
        engine.run_until_idle()
        assert all(len(s.output_ids) == 8 and s.finish_reason == "length" for s in seqs)


def test_stop_strings_eos_and_max_tokens(tiny_models):
    engine = _engine(tiny_models, 4 * 2**20, names=("llama",))
    tok = engine.tokenizers["llama"]
    free = engine.add_request("llama", tok("Hello")["input_ids"], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    engine.run_until_idle()
    assert free.finish_reason == "length" and len(free.output_ids) == 12
    stop = free.text.strip()[:2]
    cut = engine.add_request("llama", tok("Hello")["input_ids"], SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=(stop,)))
    engine.run_until_idle()
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)] and stop not in cut.text
    eos = tok.eos_token_id
    last_new = max(free.output_ids.index(t) for t in free.output_ids)
    engine.eos_ids["llama"] = {free.output_ids[last_new]}  # pretend this greedy token ends the sequence
    ended = engine.add_request("llama", tok("Hello")["input_ids"], SamplingParams(max_tokens=12, temperature=0.0))
    engine.run_until_idle()
    assert ended.finish_reason == "stop" and ended.output_ids == free.output_ids[: last_new + 1]
    engine.eos_ids["llama"] = {eos}


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen)
    greedy = logits.argmax(-1).tolist()
    seeded = [SamplingParams(temperature=1.0, seed=3)] * 4
    a = sample(logits, seeded, [torch.Generator().manual_seed(3) for _ in range(4)])
    b = sample(logits, seeded, [torch.Generator().manual_seed(3) for _ in range(4)])
    assert a == b
    assert sample(logits, [SamplingParams(temperature=1.5, top_k=1)] * 4, [None] * 4) == greedy
    assert sample(logits, [SamplingParams(temperature=1.5, top_p=1e-6)] * 4, [None] * 4) == greedy
    assert sample(logits, [SamplingParams(temperature=0.0)] * 4, [None] * 4) == greedy
    draws = {sample(logits[:1], [SamplingParams(temperature=1.0, top_k=3)], [torch.Generator().manual_seed(s)])[0] for s in range(200)}
    assert draws <= set(torch.topk(logits[0], 3).indices.tolist()) and len(draws) > 1


def test_served_models_reads_the_plan_unit(tiny_models):
    plan = colocated_plan({"a": tiny_models["llama"], "b": tiny_models["qwen"]}, rates={"a": 3.0, "b": 1.0})
    models = served_models(plan, 0)
    assert [(m.name, m.rate_rps, m.kv_bytes) for m in models] == [("a", 3.0, 16 * 2**20), ("b", 1.0, 16 * 2**20)]
    with pytest.raises(InputError, match="--unit: the plan has no unit 5"):
        served_models(plan, 5)
    engine = Engine(models)
    quotas = [s.quota_bytes for s in engine.scheduler.slots]
    assert quotas[0] == pytest.approx(3 * quotas[1], rel=1e-6)  # rate x KV bytes per token (same shapes)


def test_profile_solve_deploy_loop_on_cpu_through_the_engine(tiny_models, tmp_path):
    """`muxplan profile --backend engine` (resumable) -> time-sliced cost model -> `muxplan solve` colocates on one CPU."""
    from muxplan.files import load_contract
    from muxplan.schema import Plan, Profile
    from profiler.table import TableCostModel
    from tests.helpers import run_cli

    grid = ("--gpu", "cpu", "--tokens", "8,32", "--repeats", "1")
    for name in ("llama", "qwen"):
        run_cli("profile", "--backend", "engine", "--model", tiny_models[name], "--batches", "1,2", *grid,
                "--out", tmp_path / "profiles" / f"{name}.json", check=True)
    first = load_contract(tmp_path / "profiles" / "llama.json", Profile)
    assert (first.engine, first.sm_mechanism, first.gpu, len(first.points)) == ("muxplan-engine", "none", "cpu", 8)
    run_cli("profile", "--backend", "engine", "--model", tiny_models["llama"], "--batches", "1,2,4", *grid,
            "--out", tmp_path / "profiles" / "llama.json", check=True)  # resumes: only batch 4 is new
    again = load_contract(tmp_path / "profiles" / "llama.json", Profile)
    assert len(again.points) == 12 and [p for p in again.points if p.batch < 4] == first.points
    bad = run_cli("profile", "--backend", "engine", "--model", tiny_models["llama"], "--sm", "50", *grid, "--out", tmp_path / "x.json")
    assert bad.returncode == 2 and "--sm: SM partitions need a GPU; on CPU only 100 exists" in bad.stderr

    cost = TableCostModel([again])
    spec, gpu = get_model(str(tiny_models["llama"])), get_gpu("cpu")
    assert cost.decode_ms(spec, gpu, 1, 50, 2, 32) == pytest.approx(2 * cost.decode_ms(spec, gpu, 1, 100, 2, 32))  # a share of the time

    workload = tmp_path / "workload.yaml"
    workload.write_text("schema_version: 1\nname: loop\nmodels:\n" + "".join(
        f"- {{name: {n}, model: {tiny_models[n]}, rate_rps: {r}, prompt_tokens: {{kind: fixed, mean: 16}}, output_tokens: {{kind: fixed, mean: 8}}, "
        f"slo: {{scale: 20}}}}\n"
        for n, r in (("llama", 1.5), ("qwen", 0.5))))  # a loose SLO: profiles measured on a busy CPU are noisy (a batch-4
    # decode step measured above 3.75x the batch-1 one would leave a 5x SLO no option at all)
    run_cli("solve", "--workload", workload, "--cluster", "1x1xcpu", "--profile", tmp_path / "profiles", "--solver", "exact",
            "--out", tmp_path / "plan.json", check=True)
    plan = load_contract(tmp_path / "plan.json", Plan)
    assert [sorted(m.name for m in u.models) for u in plan.units] == [["llama", "qwen"]]
    assert plan.served_rps == pytest.approx(plan.demand_rps) and plan.demand_rps == pytest.approx(2.0, rel=0.15)  # rate of the drawn rows
    engine = Engine(served_models(plan, 0))
    seqs = [engine.add_request(m, [3, 4, 5], GREEDY) for m in ("llama", "qwen")]
    engine.run_until_idle()
    assert [len(s.output_ids) for s in seqs] == [8, 8]


def test_abort_frees_a_waiting_or_running_request(tiny_models):
    engine = _engine(tiny_models, 4 * 2**20, names=("llama",))
    long = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
    running, waiting = engine.add_request("llama", [5, 6, 7], long), engine.add_request("llama", [8, 9], long)
    for _ in range(3):
        engine.step()
    assert len(running.output_ids) >= 2
    engine.abort(running.id)
    engine.abort(waiting.id)
    engine.run_until_idle()
    assert (running.finish_reason, waiting.finish_reason) == ("abort", "abort")
    assert len(running.output_ids) < 10 and engine.blocks.num_free == engine.pool.num_blocks and engine.num_in_flight == 0


def test_a_catalog_model_serves_random_weights_at_its_real_shapes():
    """What GPU profiling and benchmarks use: no local folder, no tokenizer, token-id prompts."""
    from executor.engine.probe import EngineProbe
    from profiler.measure import ProfileRequest

    engine = Engine([ServedModel("q", "qwen2.5-0.5b", 8 * 2**20)])
    assert engine.tokenizers["q"] is None and engine.eos_ids["q"] == set()
    weights = sum(p.numel() for p in engine.runners["q"].model.parameters())
    assert weights == 494032768  # the published parameter count (tied embeddings counted once)
    seq = engine.add_request("q", [11, 12, 13], SamplingParams(max_tokens=3, temperature=0.0))
    engine.run_until_idle()
    assert len(seq.output_ids) == 3 and seq.text == "" and seq.finish_reason == "length"
    probe = EngineProbe(ProfileRequest(model="qwen2.5-0.5b", gpu="cpu", batches=(1,), prefill_tokens=(8,), context_tokens=(8,)))
    assert probe.decode_ms(100, 1, 8, repeats=1, warmup=0) > 0 and probe.info.sm_mechanism == "none"
