"""Where the benchmarks find data: beside a source checkout, or where the environment says.

``$DETPRUNE_SHARED_DATA`` names the folder of real datasets (``cifar10-sample``, ``hit-uav-thermal``,
``visdrone-annotations`` ...); without it, ``../shared/data`` beside the checkout holding this
package. Dataset cards come from the checkout's ``datasets/`` folder. From an installed wheel
without either, a benchmark falls back to synthetic data or says which folder it needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from detprune.errors import DetpruneError

#: the folder holding ``detprune/`` (a source checkout, or site-packages for an installed wheel)
CHECKOUT = Path(__file__).resolve().parents[2]


def shared_data(name: str = "") -> Path:
    """``$DETPRUNE_SHARED_DATA/name``, else ``<checkout>/../shared/data/name`` (may not exist)."""
    root = os.environ.get("DETPRUNE_SHARED_DATA")
    base = Path(root).expanduser() if root else CHECKOUT.parent / "shared" / "data"
    return base / name if name else base


def dataset_card(name: str) -> Path:
    """``<checkout>/datasets/<name>``, or an error saying the cards ship with the source checkout."""
    path = CHECKOUT / "datasets" / name
    if not path.is_file():
        raise DetpruneError(
            f"dataset card {path} not found: the cards in datasets/ ship with the source checkout; "
            "pass the card's path instead"
        )
    return path
