"""Fuzzing the VisDrone parser: any file either parses to valid boxes or raises DataFormatError
naming ``file:line``; lenient mode never raises on text and accounts for every line."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from detprune.data.report import DataReport
from detprune.data.visdrone_parse import read_annotation_file
from detprune.errors import DataFormatError

NAME = "annotations/fuzz.txt"
_TMP = Path(tempfile.mkdtemp(prefix="detprune-fuzz-"))

field = st.one_of(
    st.integers(0, 2000).map(str),
    st.integers(-5, 15).map(str),
    st.sampled_from(["", " 3", "3 ", "+4", "1.5", "1e3", "0x1f", "nan", "--1", "٣", "1_0", "\t7", "9" * 30]),
    st.text(max_size=4),
)
valid = st.tuples(
    st.integers(0, 1900),
    st.integers(0, 1000),
    st.integers(0, 120),
    st.integers(0, 120),
    st.integers(0, 1),
    st.integers(0, 11),
    st.integers(0, 1),
    st.integers(0, 2),
).map(lambda t: ",".join(map(str, t)))
line = st.one_of(
    valid,
    st.lists(field, min_size=0, max_size=10).map(",".join),  # any number of odd fields
    st.lists(field, min_size=8, max_size=8).map(lambda f: ",".join(f) + ","),  # trailing comma
    st.text(max_size=30),
)
content = st.one_of(
    st.lists(valid, min_size=1, max_size=12).map(lambda ls: "\n".join(ls).encode()),
    st.lists(valid.map(lambda v: v + ","), min_size=1, max_size=12).map(lambda ls: "\n".join(ls).encode()),
    st.lists(line, max_size=12).map(lambda ls: "\n".join(ls).encode()),
    st.lists(line, max_size=6).map(lambda ls: "\r\n".join(ls).encode()),
    st.binary(max_size=60),
)
sizes = st.one_of(st.none(), st.tuples(st.integers(1, 1200), st.integers(1, 2000)))


def _check_rows(rows: np.ndarray, size) -> None:
    assert rows.dtype == np.int64 and rows.ndim == 2 and rows.shape[1] == 8
    for left, top, w, h, score, cat, trunc, occ in rows.tolist():
        assert left >= 0 and top >= 0 and w > 0 and h > 0
        assert score in (0, 1) and 0 <= cat <= 11 and trunc in (0, 1) and occ in (0, 1, 2)
        if size is not None:
            assert left + w <= size[1] and top + h <= size[0]


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=content, size=sizes)
def test_fuzzed_annotation_files(data: bytes, size):
    path = _TMP / "fuzz.txt"
    path.write_bytes(data)
    n_lines = len(data.decode("utf-8", errors="replace").splitlines())
    try:
        rows = read_annotation_file(path, NAME, image_size=size)
    except DataFormatError as exc:
        m = re.match(rf"^{re.escape(NAME)}:(\d+): \S", str(exc))
        assert m, str(exc)
        assert 1 <= int(m.group(1)) <= max(1, n_lines)
        event("strict: DataFormatError")
    else:
        _check_rows(rows, size)
        event("strict: parsed" + (" with boxes" if len(rows) else " (no boxes)"))
    rep = DataReport()
    try:
        rows = read_annotation_file(path, NAME, image_size=size, lenient=True, report=rep)
    except DataFormatError as exc:  # only an unreadable file may still fail
        raise AssertionError(f"lenient mode raised: {exc}") from None
    _check_rows(rows, size)
    text = data.decode("utf-8", errors="replace")
    non_blank = sum(1 for ln in text.splitlines() if ln.strip())
    line_skips = [s for s in rep.skipped if "not UTF-8" not in s]
    assert len(rows) + len(rep.dropped_zero_size) + len(line_skips) == non_blank == rep.lines
