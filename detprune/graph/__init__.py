"""The channel-dependency engine: trace a model, group coupled channels, prune physically.

    graph = trace(model, example_inputs, protected=("head.out",))
    plan = graph.plan({g.id: scores for g in graph.prunable_groups()}, ratio=0.3)
    smaller = graph.apply(model, plan)

See docs/internals.md section 1 for the contract.
"""

from __future__ import annotations

from detprune.errors import GraphError
from detprune.graph.groups import ChannelGraph, ChannelGroup, Slot
from detprune.graph.trace import trace

__all__ = ["trace", "ChannelGraph", "ChannelGroup", "Slot", "GraphError"]
