"""Property-based fuzz of every file loader.

Each case starts from a valid file of one kind (cluster, workload, trace CSV/JSONL/JSON/YAML, Azure CSV, profile,
plan), mutates it (a value swapped for a hostile one, a key dropped or added, the text cut or garbled, a BOM), and
reads it through the command or loader that takes that kind. The outcome must be success or InputError (exit 2)
with one line per problem naming the file; never another exception, never a hang, never an output file left behind.
"""
import json
import signal
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from muxplan.cli import app
from muxplan.cluster import load_cluster
from muxplan.files import InputError
from muxplan.schema import Profile, ProfilePoint
from profiler.table import load_profiles
from tests.helpers import ROOT
from tests.sim_fixtures import make_plan, placed

DEEP = "__DEEP__"
HOSTILE = [-1, 0, 1, 1e20, 10**30, 2**63, -(2**63) - 1, "1e20", float("inf"), float("-inf"), float("nan"), "", "x", None,
           [], {}, True, "9" * 5000, "a" * 10_000, DEEP, {"schema_version": 1}, [1, 2, 3], "../../etc/passwd", "a\x00b", "\ud800"]
ROWS = [(0.0, "llama-7b-0", 100, 20), (0.5, "llama-7b-1", 7, 3), (2.0, "llama-7b-0", 60, 1)]


def _profile() -> dict:
    pts = [ProfilePoint(phase=ph, tp=1, sm_pct=100, batch=b, tokens=t, latency_ms=1.0 + b * t / 100)
           for ph in ("prefill", "decode") for b in (1, 4) for t in (64, 256)]
    return Profile(gpu="A100-80GB", model="llama-7b", points=pts).model_dump(mode="json")


BASES = {  # kind -> (file suffix, valid content as data or text)
    "cluster": (".yaml", yaml.safe_load((ROOT / "examples/small/cluster.yaml").read_text())),
    "workload": (".yaml", yaml.safe_load((ROOT / "examples/small/workload.yaml").read_text())),
    "trace-json": (".json", {"schema_version": 1, "requests": [dict(zip(("arrival_s", "model", "prompt_tokens", "output_tokens"), r)) for r in ROWS]}),
    "trace-yaml": (".yaml", {"schema_version": 1, "requests": [dict(zip(("arrival_s", "model", "prompt_tokens", "output_tokens"), r)) for r in ROWS]}),
    "trace-jsonl": (".jsonl", "".join(json.dumps(dict(zip(("arrival_s", "model", "prompt_tokens", "output_tokens"), r))) + "\n" for r in ROWS)),
    "trace-csv": (".csv", "arrival_s,model,prompt_tokens,output_tokens\n" + "".join(",".join(map(str, r)) + "\n" for r in ROWS)),
    "azure-csv": (".csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,374,44\n"
                          "2023-11-16 18:17:04.0319600,396,109\n2023-11-16 18:17:05.5,879,0\n"),
    "profile": (".json", _profile()),
    "plan": (".json", make_plan([[placed("llama-7b-0", 2**30)], [placed("llama-7b-1", 2**30, share=0.5)]]).model_dump(mode="json")),
}


def _paths(data, prefix=()):
    """Every (path, value) in nested data, the root included."""
    yield prefix, data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _mutate_data(data, choice: int, action: str, hostile):
    data = json.loads(json.dumps(data))
    paths = [p for p, _ in _paths(data) if p]
    path = paths[choice % len(paths)]
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if action == "replace":
        parent[path[-1]] = hostile
    elif action == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent["colour"] = hostile
    else:
        parent.append(hostile)
    return data


def _dump(data, suffix: str) -> str:
    deep = "[" * 3000 + "]" * 3000
    if suffix == ".yaml":
        return yaml.safe_dump(data, sort_keys=False, width=10**6).replace(DEEP, deep)
    return json.dumps(data).replace(f'"{DEEP}"', deep)


def _mutate_text(text: str, choice: int, action: str, hostile) -> str:
    cut = choice % (len(text) + 1)
    if action == "truncate":
        return text[:cut]
    if action == "garble":
        return text[:cut] + str(hostile)[:50] + text[cut + 1:]
    if action == "bom":
        return "\ufeff" + text
    lines = text.splitlines(keepends=True)  # replace one cell of a row (or a JSON line's value)
    k = 1 + choice % max(len(lines) - 1, 1) if len(lines) > 1 else 0
    cells = lines[k].rstrip("\n").split(",")
    cells[choice % len(cells)] = str(hostile)
    lines[k] = ",".join(cells) + "\n"
    return "".join(lines)


@st.composite
def mutated(draw):
    kind = draw(st.sampled_from(sorted(BASES)))
    suffix, base = BASES[kind]
    choice = draw(st.integers(0, 10**6))
    hostile = draw(st.sampled_from(HOSTILE))
    if isinstance(base, str) or draw(st.booleans()):  # text-level mutation
        text = base if isinstance(base, str) else _dump(base, suffix)
        action = draw(st.sampled_from(["truncate", "garble", "bom", "cell"]))
        return kind, suffix, _mutate_text(text, choice, action, hostile if hostile != DEEP else "[" * 3000)
    action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    return kind, suffix, _dump(_mutate_data(base, choice, action, hostile), suffix)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang("a loader ran for more than 60 s")


def _commands(kind: str, src: Path, out: Path, trace: Path) -> list[list]:
    """The commands that read a file of this kind (the plan twice: shown and simulated)."""
    return {"workload": [["workload", "show", src]], "azure-csv": [["workload", "import", src, "--models", "llama-7b:2", "--out", out]],
            "profile": [["profile", "show", src]], "plan": [["plan", "show", src], ["simulate", src, "-w", trace]]}.get(kind, [["workload", "show", src]])


def _read(kind: str, src: Path, out: Path, trace: Path) -> list[str] | None:
    """Read src as `kind` the way the CLI does; the InputError problems, or None when it was accepted."""
    try:
        if kind == "cluster":
            load_cluster(src)
            return None
        if kind == "profile":
            load_profiles(src)
        for args in _commands(kind, src, out, trace):
            result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
            if isinstance(result.exception, InputError):
                return result.exception.problems
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            assert result.exit_code == 0, result.output
    except InputError as exc:
        return exc.problems
    return None


@pytest.fixture
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "t.csv"
    path.write_text(BASES["trace-csv"][1])
    return path


@pytest.fixture
def no_hang():
    old = signal.signal(signal.SIGALRM, _alarm)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_files_load_or_fail_with_one_line_per_problem(tmp_path, no_hang, trace, case):
    kind, suffix, content = case
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by the examples
    src = work / f"in-{kind}{suffix}"
    src.write_text(content, errors="surrogatepass")  # a lone surrogate becomes bytes that are not UTF-8
    out = work / "out.json"
    signal.alarm(60)
    problems = _read(kind, src, out, trace)
    signal.alarm(0)
    if problems is not None:
        assert problems and all(p.startswith(f"{src}: ") and "\n" not in p for p in problems), problems
        assert not out.exists()
    leftovers = sorted(p.name for p in work.iterdir() if p.name not in (src.name, out.name))
    assert leftovers == [], leftovers


@pytest.mark.parametrize("kind", sorted(BASES))
def test_unmutated_bases_load(tmp_path, trace, kind):
    suffix, base = BASES[kind]
    src = tmp_path / f"in-{kind}{suffix}"
    src.write_text(base if isinstance(base, str) else _dump(base, suffix))
    assert _read(kind, src, tmp_path / "out.json", trace) is None
