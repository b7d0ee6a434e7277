"""The paper's runtime limits, defined once for the planner, the simulator and the engine."""
from __future__ import annotations

import math

PREFILL_TOKEN_BUDGET = 2048  # prompt tokens batched into one prefill pass

# KV blocks are head-wise and of one size per unit: a block holds BASE_BLOCK_TOKENS tokens of the unit's
# largest common head size, so a model with a smaller head fits proportionally more tokens in it.
BASE_BLOCK_TOKENS = 16

SM_PART_PCT = 10  # the runtime counts SMs in 10% parts
FULL_PARTS = 10  # 100% of the SMs
OVERBOOK_PARTS = 12  # a unit's jobs may overbook the SMs to 120%
SM_BUDGET_PCT = OVERBOOK_PARTS * SM_PART_PCT

ADBS_PERIOD_S = 8.0  # quota adaptation period
ADBS_HOT_UTIL = 0.9  # utilisation at which a model takes quota from models with slack
ADBS_GROW = 0.1  # fraction of the hot models' quota moved per period
ADBS_FLOOR = 0.25  # a donor keeps at least this fraction of its initial quota


def block_elems(head_dims: list[int] | tuple[int, ...]) -> int:
    """Elements (K and V) of one physical block on a unit whose models have these head sizes."""
    return 2 * BASE_BLOCK_TOKENS * math.lcm(*head_dims)


def block_tokens(head_dim: int, head_dims: list[int] | tuple[int, ...]) -> int:
    """Tokens one block holds for a model with ``head_dim`` on a unit whose models have ``head_dims``."""
    return block_elems(head_dims) // (2 * head_dim)
