"""Nearest-node assignment: exact float64 argmin at float32 speed, blockwise and lazily."""

import pickle

import dask.array as da
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pixelflowsom._inference import SOMModel, label_table, nearest_nodes, nearest_nodes_channel_first


def brute_force(X, codes):
    """float64 brute-force argmin (scipy sums the squared differences in channel order)."""
    d = cdist(np.asarray(X, dtype=np.float64), codes, "sqeuclidean")
    return d.argmin(axis=1), np.sqrt(d.min(axis=1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16, np.int32])
@pytest.mark.parametrize(
    ("n", "p", "k"), [(1, 1, 1), (1000, 3, 7), (5000, 20, 100), (777, 40, 36), (600, 5, 2), (513, 2, 9), (300, 8, 4)]
)
def test_equals_float64_brute_force(dtype, n, p, k):
    rng = np.random.default_rng(n + p + k)
    X = (rng.random((n, p)) * 1000).astype(dtype)
    codes = rng.random((k, p)) * 1000
    expected, dist = brute_force(X, codes)
    labels, got_dist = nearest_nodes(X, codes, return_distances=True)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_allclose(got_dist, dist, rtol=1e-12)


def test_near_ties_resolved_in_float64():
    # Pixels far from the origin, codes that differ in the 8th digit: float32 scores cannot separate them.
    rng = np.random.default_rng(0)
    codes = 1e4 + rng.normal(0, 1e-3, size=(50, 6))
    X = 1e4 + rng.normal(0, 1e-3, size=(20_000, 6))
    np.testing.assert_array_equal(nearest_nodes(X, codes), brute_force(X, codes)[0])


def test_exact_ties_go_to_lowest_node():
    # Integer data: distances are exact, ties are real; np.argmin semantics (lowest index) is the contract.
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, size=(5000, 4)).astype(float)
    codes = rng.integers(0, 3, size=(30, 4)).astype(float)
    codes[7] = codes[3]  # duplicated node: 3 must always win over 7
    labels = nearest_nodes(X, codes)
    np.testing.assert_array_equal(labels, brute_force(X, codes)[0])
    assert not (labels == 7).any()


def test_non_finite_pixels_get_minus_one():
    X = np.ones((6, 3))
    X[1, 2] = np.nan
    X[4, 0] = np.inf
    labels = nearest_nodes(X, np.zeros((2, 3)))
    np.testing.assert_array_equal(labels, [0, -1, 0, 0, -1, 0])


def test_channel_first_layout_and_threads_agree():
    rng = np.random.default_rng(2)
    X = rng.random((50_000, 8)).astype(np.float32)
    codes = rng.random((25, 8))
    one = nearest_nodes(X, codes, n_threads=1)
    np.testing.assert_array_equal(nearest_nodes(X, codes, n_threads=3), one)
    np.testing.assert_array_equal(nearest_nodes_channel_first(np.ascontiguousarray(X.T), codes), one)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_image_blocks_are_read_in_place_in_row_major_order(n_threads):
    rng = np.random.default_rng(4)
    image = rng.random((5, 90, 70)).astype(np.float32)
    image[2, 10, 20] = np.nan
    codes = rng.random((11, 5))
    block = image[:, 7:80, 3:61]  # a strided view, as a numpy-backed image's dask blocks are
    expected, dist = nearest_nodes(np.ascontiguousarray(block.reshape(5, -1).T), codes, return_distances=True)
    labels, got = nearest_nodes_channel_first(block, codes, n_threads=n_threads, return_distances=True)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(got, dist)
    assert labels.reshape(block.shape[1:])[10 - 7, 20 - 3] == -1
    _, sums, counts = nearest_nodes_channel_first(block, codes, n_threads=n_threads, exact=False, return_sums=True)
    assert counts.sum() == block[0].size - 1


def test_model_payload_is_immutable_and_pickles():
    model = SOMModel(np.arange(6.0).reshape(3, 2), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="read-only"):
        model.codes[0, 0] = 1
    with pytest.raises(AttributeError):
        model.codes = None
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.codes, model.codes)
    assert (clone.n_nodes, clone.n_features) == (3, 2)


@pytest.mark.parametrize("column", [None, 0, 1])
def test_label_table_dask_is_lazy_and_equal(column):
    rng = np.random.default_rng(3)
    X = rng.random((1000, 4))
    model = SOMModel(rng.random((9, 4)), rng.integers(0, 3, 9))
    dX = da.from_array(X, chunks=(128, 2))
    lazy = label_table(dX, model, column=column)
    assert isinstance(lazy, da.Array)
    assert lazy.dtype == np.int64
    assert lazy.chunks[0] == dX.chunks[0]
    eager = label_table(X, model, column=column)
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), eager)
    nodes = brute_force(X, model.codes)[0]
    expected = {
        None: np.column_stack([nodes, model.node_metacluster[nodes]]),
        0: nodes,
        1: model.node_metacluster[nodes],
    }[column]
    np.testing.assert_array_equal(eager, expected)


def test_distances_round_as_a_plain_float64_loop():
    # The kernel's float32 part may fuse multiply-adds; its float64 distances must not: each square rounded, then
    # summed in channel order (what scipy's cdist does), bit for bit.
    rng = np.random.default_rng(11)
    X = rng.normal(size=(2000, 7)) * 10 ** rng.uniform(-3, 3, size=(2000, 1))
    codes = rng.normal(size=(9, 7))
    labels, distances = nearest_nodes(X, codes, return_distances=True)
    expected = np.zeros(len(X))
    for c in range(X.shape[1]):
        diff = X[:, c] - codes[labels, c]
        expected = expected + diff * diff
    np.testing.assert_array_equal(distances, np.sqrt(expected))
