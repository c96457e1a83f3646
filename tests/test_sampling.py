import dask.array as da
import numpy as np
import pytest

from pixelflowsom import _sampling
from pixelflowsom._sampling import (
    apportion,
    sample_dtype,
    sample_image,
    sample_indices,
    sample_size,
    sample_sizes,
    take_rows,
)


@pytest.mark.parametrize(("n", "fraction", "expected"), [(10, 0.1, 1), (10, 0.19, 1), (1000, 0.333, 333), (7, 1.0, 7)])
def test_sample_size_is_int_of_fraction(n, fraction, expected):
    assert sample_size(n, fraction) == expected
    idx = sample_indices(n, sample_size(n, fraction), 0)
    assert len(idx) == expected
    assert len(np.unique(idx)) == expected  # without replacement
    assert (np.diff(idx) > 0).all()  # sorted
    assert idx.min() >= 0
    assert idx.max() < n


@pytest.mark.parametrize("tile", [1 << 20, 7])  # variates drawn in one tile or across many
@pytest.mark.parametrize(("n", "size"), [(100_000, 1_000), (100_000, 30_000), (50, 49), (50, 0), (1, 1)])
def test_sample_indices_distinct_sorted_and_exact_size(monkeypatch, tile, n, size):
    monkeypatch.setattr(_sampling, "_PERMUTE_LIMIT", 10)  # selection sampling for the larger shares
    monkeypatch.setattr(_sampling, "_TILE", tile)
    idx = sample_indices(n, size, 5)
    assert idx.dtype == np.int64
    assert len(idx) == size
    assert (np.diff(idx) > 0).all()
    assert size == 0 or (idx[0] >= 0 and idx[-1] < n)


@pytest.mark.parametrize(("n", "size", "limit"), [(40, 12, 10), (400, 5, 10), (40, 12, 100)])
def test_sample_indices_are_uniform(monkeypatch, n, size, limit):
    # Every item, and every pair of items, is drawn with the probability of a uniform draw without replacement: by
    # selection sampling (n above the limit, a share above 1/20) and by numpy's choice (Floyd's algorithm, a full
    # permutation).
    monkeypatch.setattr(_sampling, "_PERMUTE_LIMIT", limit)
    monkeypatch.setattr(_sampling, "_TILE", 16)
    draws = 6000
    hits = np.zeros(n)
    pair = 0
    for seed in range(draws):
        idx = sample_indices(n, size, seed)
        hits[idx] += 1
        pair += np.isin([0, n - 1], idx).all()
    p = size / n
    assert np.abs(hits - draws * p).max() < 5 * np.sqrt(draws * p * (1 - p))
    p_pair = size * (size - 1) / (n * (n - 1))
    assert abs(pair - draws * p_pair) < 5 * np.sqrt(draws * p_pair * (1 - p_pair)) + 1


def test_sample_indices_of_large_shares_take_little_memory():
    import tracemalloc

    tracemalloc.start()
    idx = sample_indices(10_000_000, 1_000_000, 3)  # numpy's choice would allocate 80 MB here
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(idx) == 1_000_000
    assert peak < 8 * 1_000_000 + 16 * 2**20


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [((37, 41), ((10, 10, 17), (41,))), ((5, 13, 17), ((2, 3), (7, 6), (5, 5, 5, 2))), ((64, 64), ((64,), (64,)))],
)
def test_block_groups_match_a_numpy_reference(shape, chunks):
    flat = sample_indices(int(np.prod(shape)), int(np.prod(shape)) // 3, 0)
    coords, order, bounds, blocks, local = _sampling._block_groups(flat, shape, chunks)
    np.testing.assert_array_equal(coords, np.stack(np.unravel_index(flat, shape), axis=1))
    starts = [np.cumsum((0, *c)) for c in chunks]
    block_of = np.stack([np.searchsorted(s, coords[:, a], side="right") - 1 for a, s in enumerate(starts)], axis=1)
    seen = []
    for g, block in enumerate(blocks):
        rows = order[bounds[g] : bounds[g + 1]]
        expected = np.flatnonzero((block_of == block).all(axis=1))
        np.testing.assert_array_equal(rows, expected)  # that block's pixels, in increasing order
        origin = np.array([s[b] for s, b in zip(starts, block, strict=True)])
        np.testing.assert_array_equal(local[:, bounds[g] : bounds[g + 1]].T, coords[rows] - origin)
        seen.append(rows)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(len(flat)))


def test_sample_depends_on_seed_only():
    np.testing.assert_array_equal(sample_indices(10_000, 1000, 3), sample_indices(10_000, 1000, 3))
    assert not np.array_equal(sample_indices(10_000, 1000, 3), sample_indices(10_000, 1000, 4))


@pytest.mark.parametrize(
    ("n_samples", "sizes", "expected"),
    [
        (10, [50, 50], [5, 5]),
        (10, [30, 30, 30], [4, 3, 3]),  # the remainder to the first on ties
        (7, [10, 60, 30], [1, 4, 2]),  # shares 0.7, 4.2, 2.1: integer parts 0, 4, 2, then the largest remainder
        (1000, [3, 4], [3, 4]),  # capped at every item
        (5, [0, 8], [0, 5]),
    ],
)
def test_apportion(n_samples, sizes, expected):
    counts = apportion(n_samples, sizes)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == min(n_samples, sum(sizes))


def test_sample_sizes():
    np.testing.assert_array_equal(sample_sizes([1000, 30]), [100, 3])  # the default fraction, 0.1
    np.testing.assert_array_equal(sample_sizes([1000, 30], fraction=0.5), [500, 15])
    np.testing.assert_array_equal(sample_sizes([1000, 30], n_samples=103), [100, 3])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 0.5, "n_samples": 10}, r"Pass fraction \(0.5\) or n_samples \(10\), not both"),
        ({"n_samples": 0}, r"n_samples=0 must be a positive integer"),
        ({"n_samples": 2.5}, r"n_samples=2.5 must be a positive integer"),
        ({"fraction": 1.5}, r"fraction=1.5 must be a number in \(0, 1\]"),
        ({"fraction": 0.0001}, r"samples no pixel; raise fraction to at least 0.001, or pass n_samples"),
    ],
)
def test_sample_sizes_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_sizes([1000], **kwargs)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.float32, np.float32), (np.float16, np.float32), (np.uint16, np.float32), (np.int8, np.float32)]
    + [(bool, np.float32), (np.float64, np.float64), (np.int32, np.float64), (np.uint64, np.float64)],
)
def test_sample_dtype_holds_the_values_exactly(dtype, expected):
    assert sample_dtype(dtype) == expected
    if np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize <= 4:  # wider integers: float64 as flowsom has them
        info = np.iinfo(dtype)
        extremes = np.array([info.min, info.max, info.max - 1], dtype=dtype)
        assert (extremes.astype(expected).astype(dtype) == extremes).all()


def test_take_rows_same_for_any_chunking():
    X = np.arange(3000.0).reshape(1000, 3)
    rows = sample_indices(1000, 0.2, 1)
    expected = X[rows]
    for chunks in [(1000, 3), (7, 3), (100, 1)]:
        np.testing.assert_array_equal(take_rows(da.from_array(X, chunks=chunks), rows), expected)
    np.testing.assert_array_equal(take_rows(X, rows), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int8, bool])
@pytest.mark.parametrize("shape", [(3, 37, 41), (2, 5, 13, 17)])
def test_sample_image_values_are_the_pixels_at_coords(dtype, shape):
    rng = np.random.default_rng(len(shape))
    data = (rng.random(shape) * 100).astype(dtype)
    view = np.asfortranarray(data)[..., ::-1][..., ::-1]  # a non-C-contiguous array with the same values
    expected_coords = None
    for image in (data, view, da.from_array(data, chunks=(1, *(7,) * (len(shape) - 1))), da.from_array(view)):
        values, coords = sample_image(image, 0.3, 5)
        if expected_coords is None:
            expected_coords = coords
        np.testing.assert_array_equal(coords, expected_coords)  # whatever the layout and chunking
        assert values.dtype == sample_dtype(dtype)
        assert values.shape == (len(coords), shape[0])
        assert values.flags.c_contiguous  # pixel-major, as the online SOM reads it
        np.testing.assert_array_equal(values, data[(slice(None), *coords.T)].T.astype(sample_dtype(dtype)))
    n = int(np.prod(shape[1:]))
    flat = np.ravel_multi_index(tuple(expected_coords.T), shape[1:])
    np.testing.assert_array_equal(flat, sample_indices(n, sample_size(n, 0.3), 5))  # row-major order


def _five_images():
    import xarray as xr

    rng = np.random.default_rng(0)
    arrays = [rng.random((3, 40, 50)).astype(np.float32) for _ in range(5)]
    images = [
        xr.DataArray(da.from_array(a, chunks=(1, 16, 16)), dims=("c", "y", "x"), coords={"c": ["a", "b", "c"]})
        for a in arrays
    ]
    return arrays, images


def _check_sample(sample, arrays, channels=(2, 0)):
    # Independent reference: the images' values at the returned coordinates.
    for i, array in enumerate(arrays):
        rows = sample.image_index == i
        y, x = sample.coords[rows].T
        np.testing.assert_array_equal(sample.values[rows], array[list(channels)][:, y, x].T)
        flat = np.ravel_multi_index((y, x), array.shape[1:])
        assert (np.diff(flat) > 0).all()  # row-major within every image
    assert sample.values.flags.c_contiguous
    assert sample.values.dtype == np.float32


def test_sample_pixels_reads_all_images_in_one_computation(monkeypatch):
    import dask

    from pixelflowsom import sample_pixels

    arrays, images = _five_images()
    calls = []
    compute = dask.compute

    def counting(*args, **kwargs):
        calls.append(len(args))
        return compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", counting)
    sample = sample_pixels(images, 0.1, channels=["c", "a"], random_state=0)
    assert len(calls) == 1
    _check_sample(sample, arrays)
    assert sample_size(40 * 50, 0.1) * 5 == sample.n_samples


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_sample_pixels_on_every_scheduler(scheduler):
    import dask

    from pixelflowsom import sample_pixels

    arrays, images = _five_images()
    with dask.config.set(scheduler="threads"):
        expected = sample_pixels(images, 0.2, channels=["c", "a"], random_state=4)
    with dask.config.set(scheduler=scheduler):
        sample = sample_pixels(images, 0.2, channels=["c", "a"], random_state=4)
    _check_sample(sample, arrays)
    np.testing.assert_array_equal(sample.coords, expected.coords)
    np.testing.assert_array_equal(sample.values, expected.values)


def test_sample_pixels_n_samples_splits_over_the_images():
    from pixelflowsom import sample_pixels

    arrays, images = _five_images()
    small = images[0][:, :10, :10]  # 100 pixels against 2000
    sample = sample_pixels([small, *images[1:]], n_samples=3_000, channels=["c", "a"], random_state=1)
    counts = np.bincount(sample.image_index)
    np.testing.assert_array_equal(counts, apportion(3_000, [100, 2000, 2000, 2000, 2000]))
    assert sample.n_samples == 3_000
    _check_sample(sample, [arrays[0][:, :10, :10], *arrays[1:]])
    everything = sample_pixels(images, n_samples=10**9, channels=["c", "a"], random_state=1)
    assert everything.n_samples == 5 * 2000


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": 0}, ValueError, r"fraction=0 must be a number in \(0, 1\]"),
        ({"fraction": True}, ValueError, r"fraction=True must be a number"),
        ({"fraction": 0.5, "channels": ["a", "z"]}, KeyError, r"\['z'\] not found in image at position 0"),
        ({"fraction": 0.5, "channels": ["a", "a"]}, ValueError, "must name at least one channel, each once"),
        ({"fraction": 0.001}, ValueError, "samples no pixel; raise fraction to at least"),
        ({"fraction": 0.5, "n_samples": 5}, ValueError, r"Pass fraction \(0.5\) or n_samples \(5\), not both"),
    ],
)
def test_sample_pixels_errors(kwargs, error, match):
    import xarray as xr

    from pixelflowsom import sample_pixels

    image = xr.DataArray(np.ones((2, 10, 10)), dims=("c", "y", "x"), coords={"c": ["a", "b"]})
    with pytest.raises(error, match=match):
        sample_pixels(image, **kwargs)


def _poisoned(block, block_info=None):
    """Block function that refuses to compute its block (the chunks sampling must not read)."""
    raise AssertionError(f"chunk {block_info[None]['chunk-location']} of an unselected channel was read")


@pytest.mark.parametrize("chunks", [None, (6, 9, 9), (2, 9, 9), (1, 40, 40)])
@pytest.mark.parametrize("channels", [["c4", "c0", "c2"], ["c3", "c1"], ["c5"]])
def test_sample_pixels_reads_the_selected_channels_of_the_sampled_pixels(chunks, channels):
    # Independent reference: the image's values at the returned coordinates, in the channels looked up by label.
    import xarray as xr

    from pixelflowsom import sample_pixels

    rng = np.random.default_rng(2)
    values = (rng.random((6, 23, 31)) * 50).astype(np.float32)
    labels = [f"c{i}" for i in range(6)]
    data = values if chunks is None else da.from_array(values, chunks=chunks)
    image = xr.DataArray(data, dims=("c", "y", "x"), coords={"c": labels})
    sample = sample_pixels([image], 0.25, channels=channels, random_state=3)
    positions = [labels.index(c) for c in channels]
    expected = values[positions][:, sample.coords[:, 0], sample.coords[:, 1]].T
    np.testing.assert_array_equal(sample.values, expected)
    assert sample.values.flags.c_contiguous
    assert sample.channels == channels


def test_sample_pixels_does_not_read_chunks_of_unselected_channels():
    import xarray as xr

    from pixelflowsom import sample_pixels

    values = np.arange(4 * 12 * 12, dtype=np.float32).reshape(4, 12, 12)
    selected = da.from_array(values, chunks=(1, 6, 6))
    poisoned = da.map_blocks(_poisoned, selected, dtype=np.float32)
    data = da.concatenate([selected[:2], poisoned[2:3], selected[3:]], axis=0)  # channel 2 must never be read
    image = xr.DataArray(data, dims=("c", "y", "x"), coords={"c": ["a", "b", "poisoned", "d"]})
    sample = sample_pixels([image], 0.5, channels=["d", "a"], random_state=0)
    np.testing.assert_array_equal(sample.values, values[[3, 0]][:, sample.coords[:, 0], sample.coords[:, 1]].T)
