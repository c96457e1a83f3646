"""The group statistics kernels against pandas, numpy and scipy on small seeded tables."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import median_abs_deviation

from pixelflowsom.harpy import _flowsom_object
from pixelflowsom.harpy import _group_statistics as gs
from pixelflowsom.harpy._flowsom_object import _cluster_stats

#: Rows per group: empty groups, groups of 1, 2 and 3 rows, and groups large enough for the sampled selection.
SIZES = [0, 1, 2, 3, 40, 0, gs._SAMPLE_MIN + 476, 2 * gs._SAMPLE_MIN + 1, 4, 7]
ALL_NAN_GROUP = 4  # column 1 is NaN on all its rows


def _table(seed=0, dtype=np.float64, order="C"):
    """``(n, 5)`` values and shuffled group labels: normal values with NaNs, ties, a sorted and an organ-pipe column."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(SIZES)), SIZES))
    n = len(labels)
    X = np.empty((n, 5))
    X[:, 0] = rng.normal(size=n)
    X[:, 1] = rng.exponential(size=n)
    X[:, 2] = rng.integers(0, 4, n)  # many ties
    X[:, 3] = np.arange(n)  # sorted within every group
    X[:, 4] = np.minimum(np.arange(n), n - np.arange(n))  # organ pipe
    if dtype in (np.float32, np.float64):
        X[rng.random(n) < 0.1, 0] = np.nan
        X[labels == ALL_NAN_GROUP, 1] = np.nan
        X[rng.random(n) < 0.5, 4] = np.nan
    X = X.astype(dtype)
    return (np.asfortranarray(X) if order == "F" else np.ascontiguousarray(X)), labels


def _reference(values, labels, n_groups):
    """pandas' groupby median, max and count; numpy's nanmean and nanstd, scipy's MAD, node by node."""
    values = np.asarray(values, dtype=np.float64)
    grouped = pd.DataFrame(values).groupby(labels)
    out = {
        "median": grouped.median().reindex(range(n_groups)).to_numpy(),
        "maximum": grouped.max().reindex(range(n_groups)).to_numpy(),
        "count": grouped.count().reindex(range(n_groups)).fillna(0).to_numpy(dtype=np.int64),
    }
    for key in ("mean", "sd", "mad"):
        out[key] = np.full((n_groups, values.shape[1]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        for g in range(n_groups):
            rows = values[labels == g]
            if len(rows):
                out["mean"][g] = np.nanmean(rows, axis=0)
                out["sd"][g] = np.nanstd(rows, axis=0)
                out["mad"][g] = median_abs_deviation(rows, axis=0, nan_policy="omit")
    return out


def _assert_stats(got, expected):
    for key in ("count", "median", "mad", "maximum"):
        value = getattr(got, key)
        if value is not None:
            np.testing.assert_array_equal(value, expected[key], err_msg=key)  # exact, NaN where expected
    if got.mean is not None:
        np.testing.assert_allclose(got.mean, expected["mean"], rtol=1e-13, atol=1e-13, err_msg="mean")
        np.testing.assert_allclose(got.sd, expected["sd"], rtol=1e-13, atol=1e-13, err_msg="sd")


def test_table_has_the_edge_cases():
    X, labels = _table()
    counts = np.bincount(labels, minlength=len(SIZES))
    assert {0, 1, 2, 3} <= set(counts)
    assert counts.max() >= gs._SAMPLE_MIN
    assert (counts[counts >= gs._SAMPLE_MIN] % 2 == 0).any()
    assert (counts[counts >= gs._SAMPLE_MIN] % 2 == 1).any()
    assert np.isnan(X[labels == ALL_NAN_GROUP, 1]).all()


@pytest.mark.parametrize(
    ("shared", "n_nodes", "n_metas"),
    [
        (True, len(SIZES), 3),
        (False, len(SIZES), 3),
        (False, 400, 3),  # more than 256 (metacluster, node) pairs: 16-bit sort keys
        (False, 300, 500),  # more possible pairs than are counted: the pairs are sorted instead
    ],
)
def test_sort_rows(shared, n_nodes, n_metas):
    rng = np.random.default_rng(1)
    _, nodes = _table()
    if n_nodes > len(SIZES):
        nodes = rng.integers(0, n_nodes, len(nodes))
    if shared:  # every node in one metacluster
        metas = rng.integers(0, n_metas, n_nodes)[nodes]
    else:
        metas = rng.integers(0, n_metas, len(nodes))
    order = gs.sort_rows(nodes, n_nodes, metas, n_metas)

    perm = order.perm
    np.testing.assert_array_equal(np.sort(perm), np.arange(len(nodes)))
    np.testing.assert_array_equal(perm, np.lexsort((np.arange(len(nodes)), nodes, metas)))  # stable
    np.testing.assert_array_equal(order.meta_bounds, np.r_[0, np.cumsum(np.bincount(metas, minlength=n_metas))])
    starts, stops, ptr = order.node_pieces
    assert len(ptr) == n_nodes + 1
    for j in range(n_nodes):
        positions = np.concatenate([[], *[np.arange(starts[i], stops[i]) for i in range(ptr[j], ptr[j + 1])]])
        np.testing.assert_array_equal(positions, np.flatnonzero(nodes[perm] == j))
        assert (stops[ptr[j] : ptr[j + 1]] > starts[ptr[j] : ptr[j + 1]]).all()  # no empty piece
    if shared:
        np.testing.assert_array_equal(np.diff(ptr), np.bincount(nodes, minlength=n_nodes) > 0)
    else:
        assert (np.diff(ptr) > 1).any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.bool_])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("channels", [None, slice(1, 4), [4, 0]])
def test_gather_columns(dtype, order, channels, monkeypatch):
    monkeypatch.setattr(gs, "_GATHER_ROWS", 1000)  # several row blocks for the C layout
    X, _ = _table(dtype=dtype, order=order)
    perm = np.random.default_rng(2).permutation(len(X))[: len(X) // 2]
    expected = X[perm] if channels is None else X[perm][:, channels]
    for out_dtype in (np.float64, np.float32):
        got = gs.gather_columns(X, perm, channels, dtype=out_dtype)
        assert got.dtype == out_dtype
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected.T.astype(out_dtype))


def test_gather_columns_converts_other_dtypes():
    X = np.arange(12, dtype=">f8").reshape(6, 2).astype(np.float16)
    np.testing.assert_array_equal(gs.gather_columns(X, [5, 0]), X[[5, 0]].T.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shared", [True, False])
def test_group_stats_match_pandas_numpy_scipy(dtype, order, shared):
    X, nodes = _table(dtype=dtype, order=order)
    rng = np.random.default_rng(3)
    n_nodes, n_metas = len(SIZES), 3
    metas = rng.integers(0, n_metas, n_nodes)[nodes] if shared else rng.integers(0, n_metas, len(nodes))
    order_ = gs.sort_rows(nodes, n_nodes, metas, n_metas)
    columns = gs.gather_columns(X, order_.perm, dtype=dtype)  # float32 values are reduced as they are

    got = gs.group_stats(columns, *order_.node_pieces, mad=True, spread=True, maximum=True)
    _assert_stats(got, _reference(X, nodes, n_nodes))
    assert np.isnan(got.median[ALL_NAN_GROUP, 1])
    assert got.count[ALL_NAN_GROUP, 1] == 0
    meta = gs.group_stats(columns, *order_.meta_pieces)
    assert meta.mad is meta.mean is meta.sd is meta.maximum is None
    _assert_stats(meta, _reference(X, metas, n_metas))


def test_group_stats_do_not_depend_on_threads():
    X, nodes = _table()
    order = gs.sort_rows(nodes, len(SIZES), np.zeros_like(nodes), 1)
    columns = gs.gather_columns(X, order.perm)
    first = gs.group_stats(columns, *order.node_pieces, mad=True, spread=True, maximum=True, n_threads=1)
    for n_channels, n_threads in [(5, 2), (5, 7), (1, 1), (1, 9)]:
        run = gs.group_stats(
            columns[:n_channels], *order.node_pieces, mad=True, spread=True, maximum=True, n_threads=n_threads
        )
        for key, value in run._asdict().items():
            np.testing.assert_array_equal(value, getattr(first, key)[:, :n_channels], err_msg=key)


@pytest.mark.parametrize(
    "values",
    [
        np.arange(5000.0),  # sorted
        np.arange(5001.0)[::-1],  # reversed
        np.minimum(np.arange(6000.0), 6000.0 - np.arange(6000.0)),  # organ pipe
        np.full(3000, 2.5),  # all equal
        np.r_[np.zeros(2000), np.ones(2000)],  # two values, the middle pair straddling them
        np.r_[np.zeros(2000), np.ones(2001)],
        np.repeat(np.arange(50.0), 41),  # many ties
        np.random.default_rng(4).standard_cauchy(4097),  # heavy tails
        np.array([3.0, -1.0]),
        np.array([7.0]),
    ],
)
def test_median_and_mad_on_patterns(values):
    got = gs.group_stats(values[None, :], [0], [len(values)], [0, 1], mad=True)
    assert got.median[0, 0] == np.median(values)
    assert got.mad[0, 0] == median_abs_deviation(values)


def test_infinite_values():
    groups = [[np.inf, np.inf, 1.0], [1.0, 2.0, np.inf], [-np.inf, np.inf], [np.inf, -np.inf, np.nan, 5.0], [np.inf]]
    values = np.concatenate(groups)[:, None]
    labels = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    with np.errstate(invalid="ignore"):
        expected = _reference(values, labels, len(groups))
    got = gs.group_stats(values.T, *gs.sort_rows(labels, len(groups), labels, len(groups)).node_pieces, mad=True)
    np.testing.assert_array_equal(got.median, expected["median"])
    np.testing.assert_array_equal(got.mad, expected["mad"])


def test_count_above():
    values = np.array([1.0, 5.0, np.nan, 2.0, 3.0, 9.0, 0.5])
    starts, stops, ptr = np.array([0, 3, 5]), np.array([3, 5, 7]), np.array([0, 2, 2, 3])
    got = gs.count_above(values, starts, stops, ptr, [1.5, 0.0, np.nan])
    np.testing.assert_array_equal(got, [3, 0, 0])  # 5, 2, 3 above 1.5; no value in group 1; NaN threshold


@pytest.mark.parametrize("channels_per_block", [None, 2])
@pytest.mark.parametrize("metaclustering", ["shared", "mixed", "sparse"])
def test_cluster_stats_of_any_metaclustering(metaclustering, channels_per_block, monkeypatch):
    """``build_flowsom``'s statistics when ``metaclustering`` is not ``node_metacluster[clustering]``."""
    X, nodes = _table(dtype=np.float32, order="C" if channels_per_block is None else "F")
    if channels_per_block is not None:  # contiguous channels, copied and reduced a few at a time
        monkeypatch.setattr(_flowsom_object, "_BLOCK_BYTES", 8 * len(X) * channels_per_block)
    rng = np.random.default_rng(5)
    metas = {
        "shared": rng.integers(0, 3, len(SIZES))[nodes],
        "mixed": rng.integers(0, 3, len(nodes)),
        "sparse": rng.choice(np.array([-7, 10**12, 3]), len(nodes)),
    }[metaclustering]
    distances = rng.exponential(size=len(nodes))
    counts = np.bincount(nodes, minlength=len(SIZES))
    stats = _cluster_stats(X, nodes, metas, distances, counts, 4)

    expected = pd.DataFrame(X).groupby(metas).median()
    np.testing.assert_array_equal(stats.metaclusters, expected.index)
    assert stats.metacluster_medians.dtype == np.float32
    np.testing.assert_array_equal(stats.metacluster_medians, expected.to_numpy())
    nodes_expected = pd.DataFrame(X).groupby(nodes).median().reindex(range(len(SIZES)))
    assert stats.medians.dtype == np.float32
    np.testing.assert_array_equal(stats.medians, nodes_expected.to_numpy())
    reference = _reference(X, nodes, len(SIZES))
    np.testing.assert_array_equal(stats.mad_values[:, 1:], reference["mad"])
    np.testing.assert_allclose(stats.sd_values[:, 1:], reference["sd"], rtol=1e-13, atol=1e-13)
