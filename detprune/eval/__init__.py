"""Evaluation and measurement: mAP@0.5 through pycocotools, top-1, params, FLOPs (2·MAC) and latency."""
