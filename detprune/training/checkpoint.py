"""Training checkpoints: atomic writes, a kept previous copy, RNG states, clear load errors.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: no pickled module or class is ever needed to read it. It stores
a model's ``state_dict`` only, never its architecture: whoever resumes builds the model (dense
from the adapter, or pruned through ``detprune.load(recipe)``) and loads the weights into it, and
:func:`load_model_state` says clearly when the two do not fit.

Writes go to a temporary file in the same folder, are fsync'ed and renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so a crash leaves either the old or the new
checkpoint, never half of one. Before ``last.pt`` is replaced, the current one is kept as
``last.prev.pt`` (a hard link, so no copy), so a checkpoint damaged later on disk still leaves one
to resume from.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detprune.errors import DetpruneError

FORMAT = "detprune-train-checkpoint"
VERSION = 1


class CheckpointError(DetpruneError):
    """A checkpoint is missing, damaged, or does not fit the model it is loaded into."""


def previous_path(path: str | os.PathLike) -> Path:
    """``out/last.pt`` -> ``out/last.prev.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def save_atomic(obj: Any, path: str | os.PathLike, *, keep_previous: bool = False) -> Path:
    """``torch.save`` to ``path`` via temp file + ``os.replace``; optionally keep the old file.

    With ``keep_previous`` an existing, readable ``path`` becomes :func:`previous_path` first.
    An unreadable one (damaged on disk) is not rotated, so it cannot push out a good previous copy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file() and _is_complete(path):
            prev = previous_path(path)
            link = prev.with_name(f".{prev.name}.tmp-{os.getpid()}")
            try:
                os.link(path, link)
            except OSError:  # file systems without hard links
                shutil.copyfile(path, link)
            os.replace(link, prev)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; damage is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: holds Python objects that a weights-only load refuses ({_first_line(exc)}); "
            "detprune checkpoints hold only tensors and plain containers"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{path}: checkpoint is truncated or corrupt ({_first_line(exc)}){_prev_hint(path)}"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a detprune training checkpoint (found {keys})")
    if int(obj.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {obj['version']} is newer than this detprune ({VERSION})"
        )
    return obj


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)`` with a message naming the first mismatch and its cause."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the checkpoint's weights do not fit the model: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    for key, value in own.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"{path}: '{key}' is {list(state[key].shape)} in the checkpoint but {list(value.shape)} "
                "in the model; a checkpoint of a pruned model needs the pruned architecture "
                "(rebuild it with detprune.load(recipe) and load these weights into it)"
            )
    model.load_state_dict(state)


# ---- RNG states as tensors and plain numbers (weights_only-safe) -----------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU) and CUDA generator states of this process."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`. CUDA states are restored when the device count matches."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---- helpers ---------------------------------------------------------------------------------
def _is_complete(path: Path) -> bool:
    """Cheap integrity check: a torch zip archive with a readable central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _prev_hint(path: Path) -> str:
    prev = previous_path(path)
    if prev.is_file() and prev != path and _is_complete(prev):
        return f"; the previous checkpoint {prev} is intact: resume from it with --resume {prev}"
    return ""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _few(names: list[str], n: int = 4) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return "[" + ", ".join(names[:n]) + "]" + more
