"""Clusters: a YAML/JSON file, or the shorthand ``4x8xA100-80GB`` (nodes x GPUs x type, joined by '+')."""
from __future__ import annotations

import re
from pathlib import Path

from muxplan.catalog import get_gpu
from muxplan.files import InputError, load_contract
from muxplan.schema import Cluster, NodeSpec

_SHORTHAND = re.compile(r"^(\d+)x(\d+)x([A-Za-z0-9][A-Za-z0-9.\-]*)$")


def parse_cluster_shorthand(text: str) -> Cluster:
    nodes: list[NodeSpec] = []
    for part in text.split("+"):
        match = _SHORTHAND.match(part.strip())
        if not match:
            raise InputError(f"cluster '{text}': '{part}' is not NODESxGPUSxTYPE (e.g. 4x8xA100-80GB)")
        num_nodes, num_gpus, gpu = int(match[1]), int(match[2]), match[3]
        get_gpu(gpu)
        if num_nodes < 1 or not 1 <= num_gpus <= 64:
            raise InputError(f"cluster '{text}': need >= 1 node and 1..64 GPUs per node")
        nodes += [NodeSpec(name=f"node{len(nodes) + i}", gpu=gpu, num_gpus=num_gpus) for i in range(num_nodes)]
    return Cluster(nodes=nodes)


def load_cluster(ref: str | Path) -> Cluster:
    """A cluster from a file path or the shorthand; every GPU name must resolve."""
    path = Path(ref)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        cluster = load_contract(path, Cluster)
        for i, node in enumerate(cluster.nodes):
            try:
                get_gpu(node.gpu, cluster.gpus)
            except InputError as exc:
                raise InputError(f"{path}: nodes[{i}].gpu: {exc}") from None
        return cluster
    return parse_cluster_shorthand(str(ref))
