"""A synthetic VisDrone-format drone dataset: the embedded default for the demo and the tests.

Scenes are drawn top-down like VisDrone frames: textured ground with fields, roads with lanes
and sidewalks, roofs, trees whose canopies occlude objects, ten object classes with distinct
silhouettes/colours/sizes (``synthetic_sprites.py``), "others" (category 11, score 0), truncated
objects at the border and ignored regions (category 0) crowded with unlabelled small objects.
Every image depends only on ``(seed, index)``, so a split is reproducible file by file. The output
is an ordinary VisDrone folder (``images/*.jpg``, ``annotations/*.txt``) read by the same loader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from detprune.data.card import DatasetCard
from detprune.data.synthetic_sprites import SPRITES, car, motor, others, pedestrian
from detprune.data.visdrone_parse import VISDRONE_CLASSES
from detprune.errors import DataFormatError

GENERATOR_VERSION = 1
DEFAULT_SIZE = (512, 384)  # (width, height): objects are sized for a 256-320 px network input
DEFAULT_SPEC: dict[str, Any] = {"seed": 0, "size": list(DEFAULT_SIZE), "images": {"train": 320, "val": 80}}
MARKER = ".detprune-synthetic.json"
_CATS = np.array(sorted(SPRITES))
_FREQ = np.array([SPRITES[c][2] for c in _CATS]) / sum(SPRITES[c][2] for c in _CATS)


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.array([(85, 120, 60), (120, 125, 80), (150, 135, 95), (115, 115, 110)][rng.integers(4)], np.float32)
    tex = 0.5 * _noise(rng, h, w, 64) + 0.3 * _noise(rng, h, w, 16) + 0.2 * _noise(rng, h, w, 4) - 0.5
    img = base[None, None] * (1 + 0.45 * tex[..., None]) + rng.normal(0, 6, 3)
    for _ in range(rng.integers(1, 4)):  # fields of another tint
        x, y = rng.integers(0, w), rng.integers(0, h)
        fw, fh = rng.integers(w // 6, w // 2), rng.integers(h // 6, h // 2)
        img[y : y + fh, x : x + fw] *= rng.uniform(0.8, 1.2, 3)
    return img


class Scene:
    """One image being drawn: the canvas, occupancy and the objects placed so far."""

    def __init__(self, rng: np.random.Generator, w: int, h: int):
        self.rng, self.w, self.h = rng, w, h
        self.s = float(np.sqrt(w * h / (DEFAULT_SIZE[0] * DEFAULT_SIZE[1])))
        self.img = _ground(rng, h, w)
        self.road = np.zeros((h, w), bool)
        self.blocked = np.zeros((h, w), bool)  # buildings, ignored regions, placed objects
        self.roads: list[tuple[str, int, int]] = []  # (orientation, start, width) across the road
        self.objects: list[dict[str, Any]] = []
        self.rows: list[list[int]] = []

    # ---- background --------------------------------------------------------------------
    def add_roads(self) -> None:
        rng, s = self.rng, self.s
        for _ in range(rng.integers(1, 4)):
            horiz = bool(rng.random() < 0.5)
            span = self.h if horiz else self.w
            width = int(rng.uniform(40, 52) * s)
            start = int(rng.integers(0, max(1, span - width)))
            walk = int(6 * s)
            sl = (slice(max(0, start - walk), start + width + walk), slice(None))
            al = (slice(start, start + width), slice(None))
            if not horiz:
                sl, al = sl[::-1], al[::-1]
            self.img[sl] = self.img[sl] * 0.2 + np.array([175, 172, 165], np.float32) * 0.8
            asphalt = rng.uniform(70, 100)
            self.img[al] = asphalt + 8 * (_noise(rng, self.h, self.w, 3)[al][..., None] - 0.5)
            mid, dash = start + width // 2, int(10 * s)
            for t in range(0, self.w if horiz else self.h, 2 * dash):
                p1, p2 = (t, mid - 1), (t + dash, mid)
                if not horiz:
                    p1, p2 = p1[::-1], p2[::-1]
                cv2.rectangle(self.img, p1, p2, (225, 225, 220), -1)
            self.road[al] = True
            self.roads.append(("h" if horiz else "v", start, width))

    def add_buildings(self) -> None:
        rng, s = self.rng, self.s
        for _ in range(rng.integers(0, 4)):
            bw, bh = int(rng.uniform(40, 110) * s), int(rng.uniform(40, 90) * s)
            x, y = int(rng.integers(0, max(1, self.w - bw))), int(rng.integers(0, max(1, self.h - bh)))
            if self.road[y : y + bh, x : x + bw].any():
                continue
            roof = np.array([(150, 70, 60), (130, 130, 135), (160, 150, 130)][rng.integers(3)], np.float32)
            sh = int(5 * s)
            self.img[y + sh : y + bh + sh, x + sh : x + bw + sh] *= 0.55  # shadow
            self.img[y : y + bh, x : x + bw] = roof + rng.normal(0, 5, (min(bh, self.h - y), min(bw, self.w - x), 3))
            cv2.line(self.img, (x, y + bh // 2), (x + bw, y + bh // 2), tuple(float(c) * 0.8 for c in roof), 2)
            self.blocked[y : y + bh, x : x + bw] = True

    # ---- objects -----------------------------------------------------------------------
    def _paste(self, sprite: np.ndarray, x: int, y: int, shadow: bool = True) -> tuple[int, int, int, int] | None:
        """Alpha-composite at top-left ``(x, y)``; returns the visible box ``(x1, y1, x2, y2)``."""
        sh, sw = sprite.shape[:2]
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + sw, self.w), min(y + sh, self.h)
        if x2 <= x1 or y2 <= y1:
            return None
        crop = sprite[y1 - y : y2 - y, x1 - x : x2 - x]
        a = crop[..., 3:4]
        if shadow:
            d = max(1, int(2 * self.s))
            sx1, sy1, sx2, sy2 = x1 + d, y1 + d, min(x2 + d, self.w), min(y2 + d, self.h)
            self.img[sy1:sy2, sx1:sx2] *= 1 - 0.45 * a[: sy2 - sy1, : sx2 - sx1]
        self.img[y1:y2, x1:x2] = self.img[y1:y2, x1:x2] * (1 - a) + crop[..., :3] * a
        ys, xs = np.nonzero(crop[..., 3] > 0.5)
        if len(xs) == 0:
            return None
        return x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1

    def _orient(self, sprite: np.ndarray, horiz: bool | None) -> np.ndarray:
        if horiz is None:
            sprite = np.rot90(sprite, int(self.rng.integers(4)))
        elif not horiz:
            sprite = np.rot90(sprite)
        if self.rng.random() < 0.5:
            sprite = sprite[:, ::-1] if (horiz is None or horiz) else sprite[::-1]
        return np.ascontiguousarray(sprite)

    def _spot(self, cat: int, sprite_hw: tuple[int, int]) -> tuple[int, int, bool | None] | None:
        rng, kind = self.rng, SPRITES[cat][1]
        if kind in ("road", "edge") and self.roads:
            o, start, width = self.roads[rng.integers(len(self.roads))]
            horiz = o == "h"
            across = sprite_hw[0] if horiz else sprite_hw[1]
            along_len = sprite_hw[1] if horiz else sprite_hw[0]
            if kind == "road":
                c = start + (width // 4 if rng.random() < 0.5 else 3 * width // 4) + int(rng.integers(-2, 3))
            else:
                c = start + (
                    int(2 * self.s) + across // 2 if rng.random() < 0.5 else width - int(2 * self.s) - across // 2
                )
            a = int(rng.integers(-along_len // 3, (self.w if horiz else self.h) - 2 * along_len // 3))
            return (a, c - across // 2, True) if horiz else (c - across // 2, a, False)
        x = int(rng.integers(-sprite_hw[1] // 3, self.w - 2 * sprite_hw[1] // 3))
        y = int(rng.integers(-sprite_hw[0] // 3, self.h - 2 * sprite_hw[0] // 3))
        return x, y, None

    def add_objects(self, n: int) -> None:
        rng = self.rng
        for cat in rng.choice(_CATS, size=n, p=_FREQ):
            draw = SPRITES[int(cat)][0]
            base = draw(rng, self.s)
            for _ in range(25):
                spot = self._spot(int(cat), base.shape[:2])
                sprite = self._orient(base, spot[2])
                x, y = spot[0], spot[1]
                sh, sw = sprite.shape[:2]
                region = (slice(max(0, y - 2), max(0, y + sh + 2)), slice(max(0, x - 2), max(0, x + sw + 2)))
                if self.blocked[region].any() or (SPRITES[int(cat)][1] == "walk" and self.road[region].any()):
                    continue
                box = self._paste(sprite, x, y)
                if box is None:
                    continue
                cut = x < 0 or y < 0 or x + sw > self.w or y + sh > self.h
                self.blocked[region] = True
                self.objects.append(
                    {"cat": int(cat), "box": box, "truncated": int(cut), "sprite": sprite, "xy": (x, y)}
                )
                break

    def add_ignored_region(self) -> None:
        """A crowded patch (parking lot / market) of small unlabelled objects, boxed as category 0."""
        rng, s = self.rng, self.s
        rw, rh = int(rng.uniform(70, 120) * s), int(rng.uniform(50, 90) * s)
        x, y = int(rng.integers(0, max(1, self.w - rw))), int(rng.integers(0, max(1, self.h - rh)))
        if self.blocked[y : y + rh, x : x + rw].any():
            return
        self.img[y : y + rh, x : x + rw] = self.img[y : y + rh, x : x + rw] * 0.4 + np.float32(95) * 0.6
        for _ in range(int(rw * rh / (90 * s * s))):
            draw = (pedestrian, car, motor, others)[rng.integers(4)]
            sp = np.rot90(draw(rng, 0.55 * s), int(rng.integers(4)))
            px = x + int(rng.integers(0, max(1, rw - sp.shape[1])))
            py = y + int(rng.integers(0, max(1, rh - sp.shape[0])))
            self._paste(np.ascontiguousarray(sp), px, py, shadow=False)
        self.blocked[y : y + rh, x : x + rw] = True
        self.rows.append([x, y, rw, rh, 0, 0, 0, 0])

    def add_trees(self) -> np.ndarray:
        """Tree canopies drawn over everything; returns the canopy mask (for occlusion levels)."""
        rng, s = self.rng, self.s
        mask = np.zeros((self.h, self.w), np.uint8)
        for _ in range(rng.integers(3, 11)):
            cx, cy = int(rng.integers(0, self.w)), int(rng.integers(0, self.h))
            if self.road[cy, cx] and rng.random() < 0.7:
                continue  # trees stand beside roads, overhanging them a little
            for _ in range(rng.integers(2, 5)):
                r = int(rng.uniform(7, 15) * s)
                cv2.circle(mask, (cx + int(rng.integers(-8, 9) * s), cy + int(rng.integers(-8, 9) * s)), r, 1, -1)
        m = mask.astype(bool)
        leaf = np.array([40, 85, 35], np.float32) * (0.8 + 0.5 * _noise(rng, self.h, self.w, 3))[..., None]
        self.img[m] = leaf[m]
        return m

    def finish(self, canopy: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
        for ob in self.objects:
            x1, y1, x2, y2 = ob["box"]
            x, y = ob["xy"]
            a = ob["sprite"][y1 - y : y2 - y, x1 - x : x2 - x, 3] > 0.5
            covered = float(canopy[y1:y2, x1:x2][a].mean()) if a.any() else 0.0
            occ = 0 if covered < 0.01 else 1 if covered <= 0.5 else 2
            score = 0 if ob["cat"] == 11 else 1
            self.rows.append([x1, y1, x2 - x1, y2 - y1, score, ob["cat"], ob["truncated"], occ])
        img = cv2.GaussianBlur(self.img, (0, 0), 0.6)
        yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        vignette = 1 - 0.18 * (((xx / self.w - 0.5) ** 2 + (yy / self.h - 0.5) ** 2) * 2)
        img = img * vignette[..., None] * self.rng.uniform(0.85, 1.1) + self.rng.normal(0, 3, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), self.rows


def render(seed: int, index: int, size: tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, list[list[int]]]:
    """Image ``index`` of the set made with ``seed``: RGB ``uint8`` and its VisDrone rows."""
    w, h = size
    rng = np.random.default_rng([seed, index])
    scene = Scene(rng, w, h)
    scene.add_roads()
    scene.add_buildings()
    for _ in range(int(rng.random() < 0.5) + int(rng.random() < 0.2)):
        scene.add_ignored_region()
    scene.add_objects(int(rng.integers(18, 40) * scene.s**2))
    return scene.finish(scene.add_trees())


def generate(
    out: str | Path, images: int, seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE, progress: bool = True
) -> Path:
    """Write ``out/images/*.jpg`` and ``out/annotations/*.txt`` (VisDrone format)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(images), desc=f"synth {out.name}", unit="img", disable=not progress or None, leave=False):
        img, rows = render(seed, i, size)
        stem = f"{seed:07d}_{i:05d}_s_{size[0]}x{size[1]}"
        cv2.imwrite(
            str(out / "images" / f"{stem}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        (out / "annotations" / f"{stem}.txt").write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    return out


def card_for(root: Path, spec: dict[str, Any], name: str = "synthetic") -> DatasetCard:
    return DatasetCard(
        name=name,
        task="detection",
        format="visdrone",
        root=root,
        splits={k: k for k in spec["images"]},
        classes=list(VISDRONE_CLASSES),
        category_ids=list(range(1, 11)),
        ignore=(0, 11),
        img_size=320,
        source=str(root),
        generate=spec,
    )


def ensure_generated(card: DatasetCard) -> DatasetCard:
    """Generate a card's synthetic splits under ``card.root`` unless they are there already.

    Generation goes to a temporary folder renamed into place, so a crash or a concurrent process
    never leaves a half-written set. A folder without our marker is never touched.
    """
    spec = {**DEFAULT_SPEC, **(card.generate or {})}
    _check_spec(spec, card.source)
    want = {"version": GENERATOR_VERSION, **spec}
    root = card.root
    marker = root / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want:
                return card
        except ValueError:
            pass
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise DataFormatError(f"{root}: exists and was not made by detprune's generator; pick another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for i, (split, n) in enumerate(spec["images"].items()):
            generate(tmp / split, int(n), seed=int(spec["seed"]) + 1000 * i, size=tuple(spec["size"]))
        (tmp / MARKER).write_text(json.dumps(want))
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except OSError:
        if not marker.is_file():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return card


def _check_spec(spec: dict[str, Any], source: str) -> None:
    """A card's ``generate`` values; a bad one would otherwise fail deep inside the renderer."""

    def count(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    seed, size, images = spec["seed"], spec["size"], spec["images"]
    if not count(seed, 0, 2**31 - 1):
        raise DataFormatError(f"{source}: field 'generate': seed {seed!r} is not an integer in 0..2147483647")
    if not (isinstance(size, list) and len(size) == 2 and all(count(v, 64, 8192) for v in size)):
        raise DataFormatError(f"{source}: field 'generate': size {size!r} is not [width, height], each 64..8192")
    if not (isinstance(images, dict) and images and all(count(n, 1, 10**6) for n in images.values())):
        raise DataFormatError(f"{source}: field 'generate': images {images!r} is not a mapping split -> 1..10**6")


def cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$DETPRUNE_CACHE``, else ``~/.cache/detprune``."""
    return Path(path or os.environ.get("DETPRUNE_CACHE") or Path.home() / ".cache" / "detprune").expanduser()


def ensure_default(cache: str | Path | None = None) -> DatasetCard:
    """The default synthetic set (train 320 / val 80 images, 512x384), generated on first use."""
    root = cache_dir(cache) / f"synthetic-v{GENERATOR_VERSION}"
    return ensure_generated(card_for(root, dict(DEFAULT_SPEC)))
