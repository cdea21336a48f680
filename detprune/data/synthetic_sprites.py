"""Top-down sprites of the ten VisDrone object classes (and "others") for the synthetic scenes.

Each class has its own silhouette, size range and colour family, so a small detector can learn them
in minutes, while still reading as an aerial view: vehicles are seen from above with windows and
roofs, people are head-and-shoulder blobs. A sprite is ``float32 [h, w, 4]`` (RGB 0..255, alpha
0..1) drawn heading along +x; the scene rotates it to the road direction.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Sprite = np.ndarray
Rng = np.random.Generator

CAR_COLOURS = [
    (200, 30, 30),
    (30, 60, 180),
    (235, 235, 235),
    (170, 170, 175),
    (25, 25, 30),
    (20, 110, 60),
    (210, 170, 40),
]


def _px(size: float) -> int:
    """A sprite dimension in pixels: at least 3, so small scenes (tiny ``s``) still draw every shape."""
    return max(3, int(size))


def _canvas(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32)


def _jitter(rng: Rng, colour, amount: float = 18) -> tuple[float, float, float]:
    c = np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 255)
    return tuple(float(v) for v in c)


def _rrect(img, alpha, x1, y1, x2, y2, colour, r: int = 2) -> None:
    """Filled rounded rectangle (inclusive pixel corners)."""
    x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
    r = max(0, min(r, (x2 - x1) // 2, (y2 - y1) // 2))
    for im, col in ((img, colour), (alpha, 1.0)):
        cv2.rectangle(im, (x1 + r, y1), (x2 - r, y2), col, -1)
        cv2.rectangle(im, (x1, y1 + r), (x2, y2 - r), col, -1)
        for cx, cy in ((x1 + r, y1 + r), (x2 - r, y1 + r), (x1 + r, y2 - r), (x2 - r, y2 - r)):
            cv2.circle(im, (cx, cy), r, col, -1)


def _pack(img: np.ndarray, alpha: np.ndarray) -> Sprite:
    return np.dstack([img, alpha]).astype(np.float32)


def car(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(24, 30) * s), _px(rng.uniform(12, 14) * s)
    img, a = _canvas(W, L)
    body = _jitter(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))])
    _rrect(img, a, 0, 0, L - 1, W - 1, body, r=max(2, W // 4))
    glass = (35, 40, 50)
    _rrect(img, a, int(L * 0.62), 2, int(L * 0.78), W - 3, glass, r=1)  # windscreen (front = +x)
    _rrect(img, a, int(L * 0.12), 2, int(L * 0.24), W - 3, glass, r=1)  # rear window
    roof = tuple(min(255.0, c * 1.12 + 8) for c in body)
    cv2.rectangle(img, (int(L * 0.26), 3), (int(L * 0.6), W - 4), roof, -1)
    return _pack(img, a)


def van(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(32, 38) * s), _px(rng.uniform(15, 17) * s)
    img, a = _canvas(W, L)
    body = _jitter(rng, [(235, 235, 230), (205, 205, 200), (215, 200, 160)][rng.integers(3)], 8)
    _rrect(img, a, 0, 0, L - 1, W - 1, body, r=2)
    _rrect(img, a, int(L * 0.80), 2, int(L * 0.92), W - 3, (35, 40, 50), r=1)
    for x in np.linspace(L * 0.1, L * 0.72, 5).astype(int):  # roof ribs
        cv2.line(img, (x, 2), (x, W - 3), tuple(c * 0.8 for c in body), 1)
    return _pack(img, a)


def truck(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(46, 58) * s), _px(rng.uniform(17, 20) * s)
    img, a = _canvas(W, L)
    cab = int(L * 0.22)
    _rrect(img, a, L - cab, 1, L - 1, W - 2, _jitter(rng, [(30, 70, 170), (180, 30, 30)][rng.integers(2)]), r=2)
    cv2.rectangle(img, (L - cab // 2, 3), (L - 3, W - 4), (35, 40, 50), -1)
    cargo = _jitter(rng, [(215, 120, 40), (120, 80, 45), (60, 120, 70)][rng.integers(3)])
    _rrect(img, a, 0, 0, L - cab - 3, W - 1, cargo, r=1)
    cv2.rectangle(img, (0, 0), (L - cab - 3, W - 1), tuple(c * 0.6 for c in cargo), 1)
    return _pack(img, a)


def bus(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(60, 72) * s), _px(rng.uniform(18, 20) * s)
    img, a = _canvas(W, L)
    body = _jitter(rng, [(240, 200, 30), (200, 50, 40), (40, 140, 80)][rng.integers(3)], 10)
    _rrect(img, a, 0, 0, L - 1, W - 1, body, r=3)
    for x in range(4, L - 8, max(5, int(7 * s))):  # side windows along both edges
        cv2.rectangle(img, (x, 1), (x + max(2, int(4 * s)), 3), (40, 45, 60), -1)
        cv2.rectangle(img, (x, W - 4), (x + max(2, int(4 * s)), W - 2), (40, 45, 60), -1)
    cv2.rectangle(img, (int(L * 0.3), W // 2 - 3), (int(L * 0.5), W // 2 + 3), (190, 190, 195), -1)  # roof unit
    return _pack(img, a)


def tricycle(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(18, 22) * s), _px(rng.uniform(12, 14) * s)
    img, a = _canvas(W, L)
    col = _jitter(rng, [(40, 140, 60), (140, 90, 40)][rng.integers(2)])
    pts = np.array([[0, 0], [int(L * 0.6), 0], [L - 1, W // 2], [int(L * 0.6), W - 1], [0, W - 1]], np.int32)
    cv2.fillPoly(img, [pts], col)
    cv2.fillPoly(a, [pts], 1.0)
    cv2.rectangle(img, (1, 2), (int(L * 0.5), W - 3), tuple(c * 0.65 for c in col), -1)  # cargo bed
    cv2.circle(img, (int(L * 0.72), W // 2), max(1, W // 6), (240, 220, 190), -1)  # rider
    return _pack(img, a)


def awning_tricycle(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(20, 24) * s), _px(rng.uniform(14, 16) * s)
    img, a = _canvas(W, L)
    stripe = [(40, 80, 200), (210, 40, 40)][rng.integers(2)]
    _rrect(img, a, 0, 0, int(L * 0.72), W - 1, (245, 245, 245), r=1)
    step = max(2, int(3 * s))
    for y in range(0, W, 2 * step):  # striped awning
        cv2.rectangle(img, (0, y), (int(L * 0.72), min(W - 1, y + step - 1)), stripe, -1)
    pts = np.array([[int(L * 0.72), 2], [L - 1, W // 2], [int(L * 0.72), W - 3]], np.int32)
    cv2.fillPoly(img, [pts], (60, 60, 60))
    cv2.fillPoly(a, [pts], 1.0)
    return _pack(img, a)


def motor(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(14, 17) * s), _px(rng.uniform(6, 7) * s)
    img, a = _canvas(W, L)
    cv2.ellipse(img, (L // 2, W // 2), (L // 2, W // 2), 0, 0, 360, _jitter(rng, (50, 30, 70)), -1)
    cv2.ellipse(a, (L // 2, W // 2), (L // 2, W // 2), 0, 0, 360, 1.0, -1)
    cv2.circle(img, (int(L * 0.45), W // 2), max(1, W // 3), _jitter(rng, (230, 230, 60), 30), -1)  # helmet
    return _pack(img, a)


def bicycle(rng: Rng, s: float) -> Sprite:
    L, W = _px(rng.uniform(15, 18) * s), _px(rng.uniform(6, 7) * s)
    img, a = _canvas(W, L)
    col = _jitter(rng, (40, 200, 210), 20)
    for im, c in ((img, col), (a, 1.0)):
        cv2.line(im, (1, W // 2), (L - 2, W // 2), c, max(1, int(1.5 * s)))
        cv2.circle(im, (2, W // 2), max(1, W // 3), c, 1)
        cv2.circle(im, (L - 3, W // 2), max(1, W // 3), c, 1)
    cv2.circle(img, (L // 2, W // 2), max(2, W // 3), (60, 35, 25), -1)  # rider's head
    cv2.circle(a, (L // 2, W // 2), max(2, W // 3), 1.0, -1)
    return _pack(img, a)


def pedestrian(rng: Rng, s: float) -> Sprite:
    D = _px(rng.uniform(10, 13) * s)
    img, a = _canvas(D, D)
    shirt = _jitter(rng, [(220, 60, 160), (230, 120, 30), (90, 60, 200)][rng.integers(3)], 20)
    for im, c in ((img, shirt), (a, 1.0)):
        cv2.ellipse(im, (D // 2, D // 2), (D // 2 - 1, max(2, D // 3)), 0, 0, 360, c, -1)  # shoulders
    cv2.circle(img, (D // 2, D // 2), max(2, D // 4), (40, 30, 25), -1)  # head (hair)
    return _pack(img, a)


def people(rng: Rng, s: float) -> Sprite:
    n = int(rng.integers(2, 4))
    d = _px(rng.uniform(8, 10) * s)
    L, W = n * d + 2, d + 4
    img, a = _canvas(W, L)
    bench = (150, 110, 70)
    _rrect(img, a, 0, W - 4, L - 1, W - 1, bench, r=0)
    for i in range(n):
        cx = 1 + d // 2 + i * d
        c = _jitter(rng, (250, 210, 60), 25)
        cv2.circle(img, (cx, W // 2 - 1), d // 2, c, -1)
        cv2.circle(a, (cx, W // 2 - 1), d // 2, 1.0, -1)
        cv2.circle(img, (cx, W // 2 - 1), max(1, d // 4), (40, 30, 25), -1)
    return _pack(img, a)


def others(rng: Rng, s: float) -> Sprite:
    D = _px(rng.uniform(12, 16) * s)
    img, a = _canvas(D, D)
    _rrect(img, a, 0, 0, D - 1, D - 1, _jitter(rng, (120, 90, 60)), r=1)
    cv2.line(img, (0, 0), (D - 1, D - 1), (70, 50, 30), 1)
    cv2.line(img, (0, D - 1), (D - 1, 0), (70, 50, 30), 1)
    return _pack(img, a)


# VisDrone category id -> (draw, placement, relative frequency)
SPRITES: dict[int, tuple[Callable[[Rng, float], Sprite], str, float]] = {
    1: (pedestrian, "walk", 4.0),
    2: (people, "walk", 1.5),
    3: (bicycle, "edge", 1.2),
    4: (car, "road", 5.0),
    5: (van, "road", 1.6),
    6: (truck, "road", 1.0),
    7: (tricycle, "edge", 0.9),
    8: (awning_tricycle, "edge", 0.8),
    9: (bus, "road", 0.7),
    10: (motor, "edge", 2.0),
    11: (others, "walk", 0.4),
}
