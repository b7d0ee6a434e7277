"""Discrete-event simulator of a plan: ``simulate_plan(plan, workload, cost_model, policy, seed) -> SimResult``."""
from planner.sim.engine import SimResult, simulate_plan

__all__ = ["SimResult", "simulate_plan"]
