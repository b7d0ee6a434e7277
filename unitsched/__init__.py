"""Scheduling of one LLM unit, shared by the simulator (planner/sim) and the engine (executor/engine)."""
