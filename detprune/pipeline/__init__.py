"""The whole trip of ../shared/DESIGN.md for one model (``detprune prune``): build or load, trace,
train with the pruner, plan, cut, compensate, fine-tune, evaluate, measure, save, report."""

from __future__ import annotations

from detprune.pipeline.config import PipelineConfig
from detprune.pipeline.trip import PipelineResult, run

__all__ = ["PipelineConfig", "PipelineResult", "run"]
