"""The AutoSlim study's budget matching: what the bins leave is spent one channel at a time."""

from __future__ import annotations

from detprune.bench.fidelity.autoslim import _fill


def test_fill_grows_layers_in_the_given_order_until_nothing_fits():
    fits = lambda a: sum(a) <= 7  # noqa: E731
    assert _fill((2, 2), [1, 0], (4, 4), fits) == (3, 4)  # layer 1 first, to its cap; then layer 0
    assert _fill((2, 2), [0, 1], (4, 4), fits) == (4, 3)


def test_fill_never_passes_a_cap_nor_the_budget_and_skips_layers_not_in_the_order():
    assert _fill((2, 2, 2), [2], (9, 9, 3), lambda a: True) == (2, 2, 3)
    assert _fill((2, 2), [0, 1], (9, 9), lambda a: False) == (2, 2)
