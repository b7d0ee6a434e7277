import pytest

from muxplan.catalog import get_model
from muxplan.cluster import load_cluster
from planner.budget import Budget
from planner.exact import cluster_gpus
from planner.neighbourhood import freed_cluster, improve, pairs, plan_value
from planner.placement import UnitChoice, served_per_model
from planner.tables import Demand, Option
from profiler.cost_model import load_cost_model

CM = load_cost_model()
SPEC = get_model("llama-7b")
O = Option(1, 30, 100, 8, 0.05, 0.01, 0, 0, 0)


def demand(name, rate):
    return Demand(name, "llama-7b", SPEC, rate, 100, 100)


def test_pairs_start_at_the_largest_shortfall_and_pair_smallest_meshes_first():
    demands = [demand("a", 10.0), demand("b", 10.0), demand("c", 10.0)]
    units = [UnitChoice(2, "A100-80GB", ((0, O, 10.0),)),            # a served in full
             UnitChoice(1, "A100-80GB", ((1, O, 6.0),)),             # b short by 4
             UnitChoice(4, "A100-80GB", ((2, O, 1.0),)),             # c short by 9
             UnitChoice(1, "A100-80GB", ((0, O, 1.0), (1, O, 0.0)))]  # hosts b: short by 4
    assert served_per_model(units, 3) == [11.0, 6.0, 1.0]
    assert plan_value(units, demands) == 17.0  # a's 11 counts as its demand, 10
    # firsts: unit 2 (9), then units 1 and 3 (4 each, same mesh: by index); partners by mesh size: 1, 3, 0, 2
    assert pairs(units, demands) == [(2, 1), (2, 3), (2, 0), (1, 3), (1, 0), (3, 0)]


def test_pairs_try_every_unit_while_a_model_is_hosted_nowhere():
    demands = [demand("a", 1.0), demand("b", 1.0)]
    units = [UnitChoice(2, "A100-80GB", ((0, O, 1.0),)), UnitChoice(1, "A100-80GB", ((0, O, 1.0),))]
    assert pairs(units, demands) == [(1, 0)]
    assert pairs(units[:1], demands) == []  # one unit: no pair to free
    served = [UnitChoice(1, "A100-80GB", ((0, O, 1.0),)), UnitChoice(1, "A100-80GB", ((1, O, 1.0),))]
    assert pairs(served, demands) == []  # nothing short: nothing to search


def test_freed_units_become_nodes_of_the_largest_mesh_and_one_with_the_rest():
    cluster = load_cluster("2x8xA100-80GB")
    gpus, _ = cluster_gpus(cluster)
    freed = [UnitChoice(8, "A100-80GB", ()), UnitChoice(4, "A100-80GB", ()), UnitChoice(2, "A100-80GB", ())]
    sub = freed_cluster(cluster, gpus, freed)
    assert [(n.name, n.gpu, n.num_gpus) for n in sub.nodes] == [("freed0", "A100-80GB", 8), ("freed1", "A100-80GB", 6)]
    assert [(n.num_gpus) for n in freed_cluster(cluster, gpus, freed[1:]).nodes] == [6]


def test_improve_re_solves_a_poor_plan_and_stops_where_nothing_is_short():
    # Two GPUs both serving model a, b and c hosted nowhere: freeing the pair frees the whole cluster, and the
    # exact re-solve serves all 3 req/s (three 7Bs at 1 req/s fit two A100s many times over).
    cluster = load_cluster("1x2xA100-80GB")
    demands = [demand("a", 1.0), demand("b", 1.0), demand("c", 1.0)]
    poor = [UnitChoice(1, "A100-80GB", ((0, O, 0.5),)), UnitChoice(1, "A100-80GB", ((0, O, 0.5),))]
    assert plan_value(poor, demands) == 1.0
    runs = [improve(poor, demands, cluster, CM, Budget(5.0)) for _ in range(2)]
    units, value, found = runs[0]
    assert (value, found) == (pytest.approx(3.0, abs=1e-6), 1)
    assert served_per_model(units, 3) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert sum(u.mesh_size for u in units) <= 2
    assert runs[0] == runs[1]  # deterministic
    # a plan serving everything is returned as it is, with no work spent on it
    budget = Budget(5.0)
    assert improve(units, demands, cluster, CM, budget) == (units, value, 0) and budget.used_units == 0


def test_improve_never_returns_less_than_it_was_given():
    cluster = load_cluster("1x2xA100-80GB")
    demands = [demand("a", 400.0), demand("b", 400.0)]  # far more than two GPUs serve
    start = [UnitChoice(1, "A100-80GB", ((0, O, 5.0),)), UnitChoice(1, "A100-80GB", ((1, O, 5.0),))]
    units, value, found = improve(start, demands, cluster, CM, Budget(3.0))
    assert value >= plan_value(start, demands) and value == pytest.approx(plan_value(units, demands))
    assert found >= 1  # 10 req/s on two A100s is far from what they serve
