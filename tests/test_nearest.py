"""The nearest-node kernel: exact float64 argmin at float32 speed, checked against a brute-force reference."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pixelflowsom._nearest import nearest_nodes, nearest_nodes_channel_first


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
    expected = brute_force(X, codes)[0]
    np.testing.assert_array_equal(nearest_nodes(X, codes, n_threads=1), expected)
    np.testing.assert_array_equal(nearest_nodes(X, codes, n_threads=3), expected)
    np.testing.assert_array_equal(nearest_nodes_channel_first(np.ascontiguousarray(X.T), codes), expected)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_image_blocks_are_read_in_place_in_row_major_order(n_threads):
    rng = np.random.default_rng(4)
    image = rng.random((5, 90, 70)).astype(np.float32)
    image[2, 10, 20] = np.nan
    codes = rng.random((11, 5))
    block = image[:, 7:80, 3:61]  # a strided view, as a numpy-backed image's dask blocks are
    table = block.reshape(5, -1).T  # pixels in row-major order
    finite = np.isfinite(table).all(axis=1)
    expected, dist = brute_force(table[finite], codes)
    labels, got = nearest_nodes_channel_first(block, codes, n_threads=n_threads, return_distances=True)
    np.testing.assert_array_equal(labels[finite], expected)
    np.testing.assert_allclose(got[finite], dist, rtol=1e-12)
    assert labels.reshape(block.shape[1:])[10 - 7, 20 - 3] == -1
    assert (labels[~finite] == -1).all()
    _, sums, counts = nearest_nodes_channel_first(block, codes, n_threads=n_threads, exact=False, return_sums=True)
    # exact=False keeps the float32 winner: compare the statistics with the labels the kernel gave.
    fast = nearest_nodes_channel_first(block, codes, n_threads=n_threads, exact=False)
    np.testing.assert_array_equal(counts, np.bincount(fast[finite], minlength=len(codes)))
    ref_sums = np.zeros_like(sums)
    np.add.at(ref_sums, fast[finite], table[finite].astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-10)


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


@pytest.mark.parametrize(
    ("pixels", "codes", "match"),
    [
        (np.zeros((10, 3)), np.zeros((4, 5)), "The pixels have 3 channel"),
        (np.zeros((10, 5)), np.zeros((4, 3)), "The pixels have 5 channel"),
        (np.zeros((10, 3)), np.zeros(3), "codes must be a non-empty 2D array"),
        (np.zeros((10, 3)), np.zeros((0, 3)), "codes must be a non-empty 2D array"),
        (np.zeros(10), np.zeros((4, 1)), "X must be a 2D array"),
        (np.zeros((10, 2)), np.full((4, 2), np.nan), "codes must be finite"),
    ],
)
def test_shapes_are_checked_before_the_kernel_runs(pixels, codes, match):
    with pytest.raises(ValueError, match=match):
        nearest_nodes(pixels, codes)


def test_channel_first_checks_shapes():
    with pytest.raises(ValueError, match="The pixels have 6 channel"):
        nearest_nodes_channel_first(np.zeros((6, 4, 4), np.float32), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="channel-first"):
        nearest_nodes_channel_first(np.zeros((2, 2, 2, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("layout", ["block", "pixel-major table"])
@pytest.mark.parametrize("channels", [[5, 0, 3], [2, 2], [0, 1, 2, 3, 4, 5, 6]])
def test_channel_positions_read_in_place_equal_the_selection(layout, channels):
    rng = np.random.default_rng(4)
    block = rng.random((7, 9, 300)).astype(np.float32)
    pixels = block if layout == "block" else np.ascontiguousarray(block.reshape(7, -1).T).T
    codes = rng.random((12, len(channels)))
    table = np.asarray(pixels, dtype=np.float64)[channels].reshape(len(channels), -1).T
    labels, distances = nearest_nodes_channel_first(pixels, codes, channels=channels, return_distances=True)
    expected = cdist(table, codes, "sqeuclidean")
    np.testing.assert_array_equal(labels, expected.argmin(axis=1))
    np.testing.assert_allclose(distances, np.sqrt(expected.min(axis=1)), rtol=1e-12)


@pytest.mark.parametrize(
    ("channels", "match"),
    [([0, 6], "positions in 0..5"), ([-1], "positions in 0..5"), ([], "non-empty"), ([[0, 1]], "1-d"), ([0.5], "0..5")],
)
def test_channel_positions_are_checked_before_the_kernel_runs(channels, match):
    with pytest.raises(ValueError, match=match):
        nearest_nodes_channel_first(np.zeros((6, 4, 4), np.float32), np.zeros((3, 2)), channels=channels)
