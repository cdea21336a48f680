"""``detprune eval`` and ``detprune data`` end to end, in process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import detprune
from detprune.cli import main
from detprune.data.synthetic import generate
from detprune.data.visdrone_parse import read_annotation_file


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cli") / "val", 6, seed=11, progress=False)


def _gt_rows(split):
    for f in sorted((split / "annotations").glob("*.txt")):
        yield f.stem, read_annotation_file(f)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_coco_results_json(split, tmp_path, capsys):
    results = []
    for stem, rows in _gt_rows(split):
        for r in rows[(rows[:, 5] >= 1) & (rows[:, 5] <= 10)]:
            results.append({"image_id": stem, "category_id": int(r[5]), "bbox": [int(v) for v in r[:4]], "score": 1.0})
    results.append({"image_id": results[0]["image_id"], "category_id": 11, "bbox": [0, 0, 5, 5], "score": 0.3})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    code, out, err = _run(capsys, "eval", "--predictions", str(path), "--data", str(split), "--json")
    assert code == 0
    res = json.loads(out)
    assert set(res) >= {"map50", "map50_500", "map", "per_class"}
    assert res["map50"] == pytest.approx(1.0, abs=1e-9) and res["map50_500"] == pytest.approx(1.0, abs=1e-9)
    assert set(res["per_class"]) == {
        "pedestrian",
        "people",
        "bicycle",
        "car",
        "van",
        "truck",
        "tricycle",
        "awning-tricycle",
        "bus",
        "motor",
    }
    assert res["skipped_categories"] == {"11": 1} and "skipped detections in categories" in err


def test_eval_visdrone_result_folder_matches_json(split, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "txt"
    folder.mkdir()
    results = []
    for k, (stem, rows) in enumerate(_gt_rows(split)):
        if k == 0:
            continue  # one image without a result file
        lines = []
        for r in rows[(rows[:, 5] >= 1) & (rows[:, 5] <= 10)]:
            box = r[:4] + rng.normal(0, 1.5, 4).round(2)
            score = round(float(rng.random()), 4)
            lines.append(f"{box[0]},{box[1]},{box[2]},{box[3]},{score},{r[5]},-1,-1")
            results.append({"image_id": stem, "category_id": int(r[5]), "bbox": box.tolist(), "score": score})
        (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "r.json").write_text(json.dumps(results))
    code, out, err = _run(capsys, "eval", "--predictions", str(folder), "--data", str(split), "--json")
    from_txt = json.loads(out)
    assert code == 0 and from_txt["images_without_results"] == 1 and "1 images have no result file" in err
    code, out, _ = _run(capsys, "eval", "--predictions", str(tmp_path / "r.json"), "--data", str(split), "--json")
    from_json = json.loads(out)
    for key in ("map50", "map50_500", "map"):
        assert from_txt[key] == pytest.approx(from_json[key], abs=1e-12)
    assert 0.3 < from_txt["map50"] < 0.95


def test_eval_bad_result_line_is_one_clear_line(split, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    stem = next(_gt_rows(split))[0]
    (folder / f"{stem}.txt").write_text("1,2,3,4,0.5,4,-1,-1\n1,2,3,4,high,4,-1,-1\n")
    code, out, err = _run(capsys, "eval", "--predictions", str(folder), "--data", str(split))
    assert code == 2 and out == ""
    assert err == f"detprune: error: {folder / stem}.txt:2: field 'score': 'high' is not a number\n"


def test_eval_text_report(split, tmp_path, capsys):
    (tmp_path / "empty.json").write_text("[]")
    code, out, _ = _run(capsys, "eval", "--predictions", str(tmp_path / "empty.json"), "--data", str(split))
    assert code == 0 and "mAP@0.5 (maxDets 100)   0.0000" in out and "per-class AP@0.5" in out


def test_data_synth_and_check(tmp_path, capsys):
    code, out, _ = _run(
        capsys,
        "data",
        "synth",
        "--out",
        str(tmp_path / "d"),
        "--images",
        "3",
        "--val",
        "2",
        "--seed",
        "4",
        "--size",
        "256x192",
    )
    assert code == 0 and (tmp_path / "d" / "synthetic.yaml").is_file()
    code, out, _ = _run(capsys, "data", "check", "--data", str(tmp_path / "d" / "synthetic.yaml"), "--json")
    info = json.loads(out)
    assert code == 0 and info["splits"]["train"]["images"] == 3 and info["splits"]["val"]["images"] == 2
    bad = tmp_path / "d" / "val" / "annotations"
    victim = sorted(bad.glob("*.txt"))[0]
    victim.write_text(victim.read_text() + "1,2,3,4,1,12,0,0\n")
    n = len(victim.read_text().splitlines())
    code, _, err = _run(capsys, "data", "check", "--data", str(tmp_path / "d" / "synthetic.yaml"))
    assert (
        code == 2
        and err == f"detprune: error: val/annotations/{victim.name}:{n}: field 'category': 12 is outside 0..11\n"
    )
    code, out, _ = _run(capsys, "data", "check", "--data", str(tmp_path / "d" / "synthetic.yaml"), "--lenient")
    assert code == 0 and "skipped malformed lines: 1" in out
    code, _, err = _run(capsys, "data", "synth", "--out", str(tmp_path / "e"), "--images", "1", "--size", "big")
    assert code == 2 and "--size: 'big' is not WxH" in err


class _GtNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class _GtAdapter:
    """A model adapter whose decode reads the ground truth back from the annotation file."""

    task = "detection"

    def __init__(self, num_classes, img_size):
        self.args = {"num_classes": num_classes, "img_size": img_size}

    def build(self):
        return _GtNet()

    def decode(self, outputs, metas, conf=0.1, nms_iou=0.5, max_det=500):
        assert outputs.shape[1] == 2 and (conf, nms_iou) == (0.1, 0.5)
        out = []
        for m in metas:
            rows = read_annotation_file(m["path"].replace("/images/", "/annotations/").rsplit(".", 1)[0] + ".txt")
            rows = rows[(rows[:, 5] >= 1) & (rows[:, 5] <= 10)]
            boxes = torch.tensor(np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], 1), dtype=torch.float32)
            out.append({"boxes": boxes, "scores": torch.ones(len(rows)), "labels": torch.tensor(rows[:, 5] - 1)})
        return out


class _Plugin:
    @detprune.hookimpl
    def detprune_model_adapters(self):
        return {"gt-oracle": _GtAdapter}


def test_eval_model_with_state_dict_and_checkpoint(split, tmp_path, capsys):
    host = detprune.plugins()
    host.register(_Plugin(), name="test-gt-oracle")
    try:
        state = _GtNet().state_dict()
        torch.save(state, tmp_path / "w.pt")
        torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pt")
        for w in ("w.pt", "ckpt.pt"):
            code, out, err = _run(
                capsys,
                "eval",
                "--model",
                "gt-oracle",
                "--weights",
                str(tmp_path / w),
                "--data",
                str(split),
                "--img-size",
                "128",
                "--json",
                "--device",
                "cpu",
            )
            assert code == 0, err
            assert json.loads(out)["map50_500"] == pytest.approx(1.0, abs=1e-9)
        torch.save({"conv.weight": torch.zeros(5, 3, 1, 1)}, tmp_path / "wrong.pt")
        code, _, err = _run(
            capsys, "eval", "--model", "gt-oracle", "--weights", str(tmp_path / "wrong.pt"), "--data", str(split)
        )
        assert code == 2 and "weights do not fit model" in err and err.count("\n") == 1
    finally:
        host.pm.unregister(name="test-gt-oracle")
        host.infos.pop("test-gt-oracle", None)
        host.rebuild()
