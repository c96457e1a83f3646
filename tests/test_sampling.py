import dask.array as da
import numpy as np
import pytest

from pixelflowsom._sampling import sample_indices, sample_size, take_rows


@pytest.mark.parametrize(("n", "fraction", "expected"), [(10, 0.1, 1), (10, 0.19, 1), (1000, 0.333, 333), (7, 1.0, 7)])
def test_sample_size_is_int_of_fraction(n, fraction, expected):
    assert sample_size(n, fraction) == expected
    idx = sample_indices(n, fraction, 0)
    assert len(idx) == expected
    assert len(np.unique(idx)) == expected  # without replacement
    assert (np.diff(idx) > 0).all()  # sorted
    assert idx.min() >= 0
    assert idx.max() < n


def test_sample_depends_on_seed_only():
    np.testing.assert_array_equal(sample_indices(10_000, 0.1, 3), sample_indices(10_000, 0.1, 3))
    assert not np.array_equal(sample_indices(10_000, 0.1, 3), sample_indices(10_000, 0.1, 4))


def test_take_rows_same_for_any_chunking():
    X = np.arange(3000.0).reshape(1000, 3)
    rows = sample_indices(1000, 0.2, 1)
    expected = X[rows]
    for chunks in [(1000, 3), (7, 3), (100, 1)]:
        np.testing.assert_array_equal(take_rows(da.from_array(X, chunks=chunks), rows), expected)
    np.testing.assert_array_equal(take_rows(X, rows), expected)
