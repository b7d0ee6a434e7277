"""Router and admission behaviour that needs no backend: auth, bad requests, unknown models, health, quotas."""
import asyncio

import pytest
from fastapi.testclient import TestClient

from executor.admission import Admission
from executor.router import Replica, RouterState, create_app


def make_state(api_key=None, healthy=False):
    reps = {"a": [Replica("a", "http://127.0.0.1:9", 0.75, 0, "p0", healthy), Replica("a", "http://127.0.0.1:9", 0.25, 1, "p1", healthy)],
            "b": [Replica("b", "http://127.0.0.1:9", 1.0, 1, "p1", healthy)]}
    return RouterState(reps, Admission({"a": 4, "b": 4}), {"a": 3.0, "b": 1.0}, api_key)


def test_errors_are_4xx_or_503_with_messages():
    c = TestClient(create_app(make_state(api_key="k")))
    assert c.post("/v1/completions", json={"model": "a"}).status_code == 401
    auth = {"Authorization": "Bearer k"}
    assert c.post("/v1/completions", content=b"{not json", headers=auth).status_code == 400
    assert c.post("/v1/completions", json={"prompt": "x"}, headers=auth).json()["error"]["message"] == "field 'model' is required"
    r = c.post("/v1/completions", json={"model": "zz"}, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["message"] == "model 'zz' is not served; served models: a, b"
    r = c.post("/v1/chat/completions", json={"model": "b", "messages": []}, headers=auth)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert c.get("/health").status_code == 503
    models = {m["id"]: m for m in c.get("/v1/models", headers=auth).json()["data"]}
    assert models["a"]["replicas"] == 2 and models["a"]["units"] == [0, 1] and models["a"]["healthy_replicas"] == 0
    assert 'muxplan_plan_predicted_rps{model="a"} 3.0' in c.get("/metrics").text
    r = c.get("/v1/completions", headers=auth)
    assert (r.status_code, r.json()["error"]["message"]) == (405, "/v1/completions takes POST")
    r = c.get("/v2/x", headers=auth)
    assert (r.status_code, r.json()["error"]["message"]) == (404, "no route /v2/x")


def test_routing_follows_shares_over_healthy_replicas():
    state = make_state(healthy=True)
    picks = [state.pick("a").process for _ in range(8)]
    assert picks.count("p0") == 6 and picks.count("p1") == 2
    state.set_health("p0", False)
    assert {state.pick("a").process for _ in range(4)} == {"p1"}


def test_admission_quota_and_adaptation():
    adm = Admission({"hot": 10, "cold": 10}, period_s=1e9)
    assert all(adm.admit("hot") for _ in range(10)) and not adm.admit("hot")
    adm.admit("cold")
    adm.adapt()  # hot at 100% utilisation borrows 10% of its quota from cold's slack
    assert adm.quotas == {"hot": 11, "cold": 9}
    assert adm.admit("hot")
    for _ in range(11):
        adm.release("hot")
    adm.release("cold")
    adm.adapt()
    assert adm.quotas == {"hot": 12, "cold": 8}  # its peak in that period was again 100%
    adm.adapt()
    assert adm.quotas == {"hot": 12, "cold": 8}  # an idle period: nobody hot, quotas stay


def test_an_admission_slot_is_released_on_every_path():
    from executor.admission import QueueFull, QueueTimeout

    async def scenario():
        adm = Admission({"m": 1}, period_s=1e9)
        with pytest.raises(RuntimeError):
            async with adm.slot("m"):
                raise RuntimeError("a bug while holding the slot")
        assert adm.in_flight["m"] == 0
        async with adm.slot("m"):
            with pytest.raises(QueueFull):  # no queue: over the quota at once
                async with adm.slot("m"):
                    pass
            with pytest.raises(QueueTimeout):
                async with adm.slot("m", queue_depth=1, timeout_s=0.01):
                    pass
            waiter = asyncio.ensure_future(adm.slot("m", queue_depth=1, timeout_s=5).__aenter__())
            await asyncio.sleep(0)
            assert adm.queued("m") == 1
            waiter.cancel()  # a client gone while queued frees its place
            await asyncio.sleep(0)
            assert adm.queued("m") == 0
            handed = asyncio.ensure_future(adm.slot("m", queue_depth=1, timeout_s=5).__aenter__())
            await asyncio.sleep(0)
        await handed  # the released slot passed straight to the waiter
        assert adm.in_flight["m"] == 1 and adm.queued("m") == 0
        adm.release("m")
        assert adm.in_flight["m"] == 0

    asyncio.run(scenario())
