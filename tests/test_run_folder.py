"""``prune --out/--overwrite``: a run never deletes what it did not write, never deletes the previous
result before the new run succeeds, and finds an unwritable folder or a bad plugin before any work."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_colour_folder, prune_classifier
from detprune.pipeline.run_folder import MANIFEST


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_colour_folder(tmp_path_factory.mktemp("cls"), {"train": 8, "val": 4})


def prune(folder, out, *extra):
    return prune_classifier(folder, out, *extra, latency_iters=1)


def test_a_run_records_what_it_wrote_and_leaves_no_staging(folder, tmp_path):
    out = tmp_path / "run"
    assert prune(folder, out, "--ratio", "0.25", "--finetune-epochs", "1") == 0
    written = json.loads((out / MANIFEST).read_text())["written"]
    assert written == ["pruned.pt", "report.json", "report.md", "train"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, MANIFEST])  # no staging folder left
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["pruned"] == str(out / "pruned.pt")
    assert report["training"]["finetune"]["folder"] == str(out / "train" / "finetune")
    assert (out / "train" / "finetune" / "last.pt").is_file()


def test_overwrite_never_deletes_a_users_folder(folder, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / "train" / "notes.txt").write_text("the user's own")
    assert prune(folder, out, "--overwrite", "--finetune-epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"detprune: error: {out} holds train, which no detprune run recorded writing there (no {MANIFEST} "
        "lists it); --overwrite replaces only what a run wrote: move it away or choose another --out"
    )
    assert (out / "train" / "notes.txt").read_text() == "the user's own"
    assert sorted(p.name for p in out.iterdir()) == ["train"]


def test_overwrite_replaces_only_the_previous_run(folder, tmp_path):
    out = tmp_path / "again"
    assert prune(folder, out, "--ratio", "0.25", "--finetune-epochs", "1") == 0
    (out / "keep.txt").write_text("unrelated")
    assert prune(folder, out, "--ratio", "0.5") == 2  # no --overwrite: refused
    assert prune(folder, out, "--ratio", "0.5", "--overwrite") == 0
    assert (out / "keep.txt").read_text() == "unrelated"
    assert not (out / "train").exists()  # the first run's folder; the second run trained nothing
    assert json.loads((out / "report.json").read_text())["ratio"] == 0.5


def test_a_failed_run_keeps_the_previous_result(folder, tmp_path):
    out = tmp_path / "keep"
    assert prune(folder, out, "--ratio", "0.25") == 0
    before = (out / "pruned.pt").read_bytes()
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    assert prune(folder, out, "--overwrite", "--weights", str(tmp_path / "bad.pt")) == 2
    assert (out / "pruned.pt").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".detprune-staging")]


def test_an_unwritable_out_fails_before_any_training(folder, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert prune(folder, tmp_path / "a-file" / "run", "--epochs-dense", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"detprune: error: --out {tmp_path / 'a-file' / 'run'}: cannot write there")


def test_a_bad_compensator_fails_before_any_training(folder, tmp_path, capsys):
    out = tmp_path / "late"
    assert prune(folder, out, "--epochs-dense", "1", "--compensator", "nosuch") == 2
    assert capsys.readouterr().err.startswith("detprune: error: unknown compensator 'nosuch'.")
    assert not out.exists()
