"""A prune run's output folder: written in a staging folder, swapped in only when the run succeeded.

Rules (``detprune prune --out DIR [--overwrite]``):

* Everything the run writes goes to ``DIR/.detprune-staging-XXXX/`` first; DIR itself is not
  touched until the run has finished, so a failed run leaves the previous result as it was.
* ``DIR/.detprune-run.json`` lists what a run wrote (its *manifest*). ``--overwrite`` replaces
  exactly those entries, never anything else: a file or folder the run would write that is not in
  the manifest (a user's own ``train/``) is an error before any work starts.
* Writability of DIR is checked at the start, by creating the staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from detprune.errors import DetpruneError

MANIFEST = ".detprune-run.json"
#: names a run always writes (a pruner's plots add their own names, checked when the run commits)
KNOWN = ("pruned.pt", "report.json", "report.md", "widths.png", "train")


class RunFolder:
    """The output folder of one run: ``stage`` is where it writes, :meth:`commit` moves it into place."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.owned = self._previous_manifest()
        present = [n for n in KNOWN if (self.out / n).exists()]
        if (self.owned or present) and not overwrite:
            listed = sorted(set(self.owned) | set(present))
            raise DetpruneError(
                f"{self.out} already holds a prune run ({', '.join(listed)}); choose another --out or pass --overwrite"
            )
        foreign = [n for n in present if n not in self.owned]
        if foreign:
            raise DetpruneError(
                f"{self.out} holds {', '.join(foreign)}, which no detprune run recorded writing there "
                f"(no {MANIFEST} lists it); --overwrite replaces only what a run wrote: move it away "
                "or choose another --out"
            )
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=".detprune-staging-", dir=self.out))
        except OSError as exc:
            raise DetpruneError(f"--out {self.out}: cannot write there ({exc.strerror or exc})") from None

    def _previous_manifest(self) -> list[str]:
        path = self.out / MANIFEST
        if not path.is_file():
            return self._legacy_run()
        try:
            names = json.loads(path.read_text()).get("written", [])
        except (ValueError, AttributeError, OSError) as exc:
            raise DetpruneError(f"{path}: not a readable run manifest ({exc}); remove it to start afresh") from None
        return [n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]

    def _legacy_run(self) -> list[str]:
        """A run of detprune 0.1 (no manifest): what its report.json lists in this folder, and ``train/``
        when it holds exactly the phase folders that report names."""
        try:
            report = json.loads((self.out / "report.json").read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(report, dict) or report.get("format") != "detprune-report/1":
            return []
        here = self.out.resolve()
        owned = {
            Path(p).name
            for p in (report.get("files") or {}).values()
            if isinstance(p, str) and Path(p).resolve().parent == here
        }
        phases = {
            Path(t.get("folder", "")).resolve() for t in (report.get("training") or {}).values() if isinstance(t, dict)
        }
        train = self.out / "train"
        if train.is_dir() and phases and {p.resolve() for p in train.iterdir()} <= phases:
            owned.add("train")
        return sorted(owned)

    def final(self, path: str | os.PathLike) -> Path:
        """Where a path inside the staging folder will be once the run is committed."""
        return self.out / Path(path).relative_to(self.stage)

    def commit(self) -> list[str]:
        """Swap the staged run in: remove what the previous run wrote, move the new entries in."""
        new = sorted(p.name for p in self.stage.iterdir())
        clash = [n for n in new if (self.out / n).exists() and n not in self.owned]
        if clash:
            raise DetpruneError(
                f"the run finished in {self.stage}, but {', '.join(clash)} in {self.out} was not written "
                f"by an earlier run, so it was not replaced: move it away and move the files from "
                f"{self.stage} into {self.out}"
            )
        for name in self.owned:
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for name in new:
            os.replace(self.stage / name, self.out / name)
        tmp = self.stage / MANIFEST
        tmp.write_text(json.dumps({"written": new}, indent=2))
        os.replace(tmp, self.out / MANIFEST)
        self.stage.rmdir()
        return new

    def discard(self) -> None:
        """Drop the staged files of a failed run."""
        shutil.rmtree(self.stage, ignore_errors=True)
