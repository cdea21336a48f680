"""Frequent Directions and the exact sketch (research/algorithms.md 6.2 and 6.6)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detprune_plugins.sketch.frequent_directions import (
    frequent_directions,
    gram_gap,
    mixing_matrix,
    procrustes_align,
    rebase_factors,
    sketch,
    svd_sketch,
    thin_svd,
)


def _decaying(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(3, 0.05, d, dtype=torch.float64)


def _low_rank(n: int, d: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, d, generator=g, dtype=torch.float64
    )


def _fd_bound(A: torch.Tensor, ell: int) -> float:
    """min over k < ell of ||A - A_k||_F^2 / (ell - k) (Ghashami et al. 2016, Theorem 1.1)."""
    s2 = torch.linalg.svdvals(A).square()
    return min(float(s2[k:].sum()) / (ell - k) for k in range(ell))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 90), d=st.integers(2, 70), ell=st.integers(1, 24), seed=st.integers(0, 10_000))
def test_fd_is_psd_and_within_its_bound(n, d, ell, seed):
    A = _decaying(n, d, seed)
    B = frequent_directions(A, ell, "fd")
    assert B.shape == (ell, d) and B.dtype == torch.float64
    gap = gram_gap(A, B)
    scale = float(torch.linalg.matrix_norm(A, 2)) ** 2
    assert float(gap[0]) >= -1e-9 * scale  # A^T A - B^T B is PSD
    assert float(gap[-1]) <= _fd_bound(A, ell) + 1e-9 * scale


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 90), d=st.integers(2, 70), ell=st.integers(2, 24), seed=st.integers(0, 10_000))
def test_fd_liberty_is_psd_and_within_its_bound(n, d, ell, seed):
    A = _decaying(n, d, seed)
    B = frequent_directions(A, ell, "fd-liberty")
    gap = gram_gap(A, B)
    scale = float(torch.linalg.matrix_norm(A, 2)) ** 2
    assert float(gap[0]) >= -1e-9 * scale
    assert float(gap[-1]) <= 2 * float(A.square().sum()) / ell + 1e-9 * scale


def test_svd_is_the_optimum_and_fd_is_not_better():
    A = _decaying(120, 60, seed=3)
    s = torch.linalg.svdvals(A)
    for ell in (5, 17, 40):
        opt = float(gram_gap(A, svd_sketch(A, ell))[-1])
        assert opt == pytest.approx(float(s[ell]) ** 2, rel=1e-9)
        for mode in ("fd", "fd-liberty"):
            assert float(gram_gap(A, sketch(A, ell, mode))[-1]) >= opt * (1 - 1e-9)


@pytest.mark.parametrize("mode", ["fd", "svd"])
@pytest.mark.parametrize("rank,ell", [(6, 6), (3, 10), (12, 12)])
def test_exact_when_rank_at_most_ell(mode, rank, ell):
    A = _low_rank(200, 40, rank, seed=rank)  # n >> 2*ell: FD shrinks many times on the way
    B = sketch(A, ell, mode)
    torch.testing.assert_close(B.T @ B, A.T @ A, rtol=1e-9, atol=1e-9 * float(A.square().sum()))


def test_fd_liberty_exact_when_rows_fit_its_buffer():
    A = _decaying(9, 30)
    B = frequent_directions(A, 10, "fd-liberty")
    torch.testing.assert_close(B.T @ B, A.T @ A)


def test_final_rotation_keeps_rows_added_after_the_last_shrink():
    """The reference code returns buffer rows [:ell] without rotating: the rows added since the
    last shrink (three strong ones here) would be lost."""
    ell = 4
    A = torch.zeros(11, 8, dtype=torch.float64)
    A[:8, :4] = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A[8:, 4:7] = 10 * torch.eye(3, dtype=torch.float64)  # arrive after the 2*ell buffer's one shrink
    B = frequent_directions(A, ell, "fd")
    reference = frequent_directions(A[:8], ell, "fd")  # what buffer[:ell] holds at the end
    assert float(gram_gap(A, reference)[-1]) >= 100 - 1e-9  # a strong row entirely missing
    assert float(gram_gap(A, B)[-1]) <= _fd_bound(A, ell) + 1e-9
    assert float(gram_gap(A, B)[-1]) < 0.5 * float(gram_gap(A, reference)[-1])


def test_svd_mode_is_row_order_invariant():
    A = _decaying(50, 30, seed=7)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(svd_sketch(A, 8).T @ svd_sketch(A, 8), svd_sketch(A[perm], 8).T @ svd_sketch(A[perm], 8))


@pytest.mark.parametrize("mode", ["fd", "fd-liberty", "svd"])
@pytest.mark.parametrize("n,d,ell", [(64, 576, 16), (200, 27, 20), (48, 4608, 24)])
def test_q_reproduces_the_sketch(mode, n, d, ell):
    A = _decaying(n, d, seed=n)
    B = sketch(A, ell, mode)
    Q = mixing_matrix(A, B)
    assert Q.shape == (ell, n)
    assert float((Q @ A - B).norm()) <= 1e-5 * float(B.norm())


def test_rebase_factors_error_matches_the_gram_gap():
    A = _decaying(40, 300, seed=2)
    B = sketch(A, 12, "fd")
    Q, err = rebase_factors(A, B)
    expected = float(gram_gap(A, B).abs().max()) / float(torch.linalg.matrix_norm(A, 2)) ** 2
    assert err == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(
    "A",
    [_decaying(40, 300, seed=8), _low_rank(60, 50, 20, seed=9), _decaying(90, 20, seed=10)],
    ids=["wide", "rank-deficient", "tall"],
)
def test_q_is_the_minimum_norm_solution(A):
    """Cholesky on the normal equations when A has independent rows, SVD otherwise: both give B A^+."""
    B = sketch(A, 10, "fd")
    Q, _ = rebase_factors(A, B)
    torch.testing.assert_close(Q, B @ torch.linalg.pinv(A), rtol=1e-6, atol=1e-9 * float(Q.abs().max()))


def test_procrustes_keeps_the_gram_and_aligns_rows():
    A = _decaying(30, 80, seed=4)
    B = svd_sketch(A, 10)
    target = A[:10]
    R = procrustes_align(B, target)
    torch.testing.assert_close(R.T @ R, B.T @ B)
    assert float((R - target).norm()) < float((B - target).norm())
    full = procrustes_align(svd_sketch(A, 30), A)  # full width: the alignment gives A back
    torch.testing.assert_close(full, A)


def test_thin_svd_matches_lapack_on_wide_matrices():
    A = _decaying(20, 500, seed=5)
    u, s, vh = thin_svd(A)
    torch.testing.assert_close((u * s) @ vh, A)
    torch.testing.assert_close(s, torch.linalg.svdvals(A))


def test_bad_arguments_raise():
    A = _decaying(5, 5)
    with pytest.raises(ValueError, match="ell must be >= 1"):
        frequent_directions(A, 0)
    with pytest.raises(ValueError, match="unknown Frequent Directions variant 'x'"):
        frequent_directions(A, 2, "x")
    with pytest.raises(ValueError, match="unknown sketch mode 'qr'; choose one of fd, fd-liberty, svd"):
        sketch(A, 2, "qr")
