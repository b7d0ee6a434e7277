"""The simulator runs the unit policies of ``unitsched`` (shared with the engine)."""
from unitsched.policy import POLICIES, Policy, get_policy  # noqa: F401
