import dask.array as da
import numpy as np
import pytest

from pixelflowsom._sampling import sample_image, sample_indices, sample_size, take_rows


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
        assert values.dtype == np.float64
        assert values.shape == (len(coords), shape[0])
        assert values.T.flags.c_contiguous  # channel-major, as the batch SOM and the labelling read it
        np.testing.assert_array_equal(values, data[(slice(None), *coords.T)].T.astype(np.float64))
    flat = np.ravel_multi_index(tuple(expected_coords.T), shape[1:])
    np.testing.assert_array_equal(flat, sample_indices(int(np.prod(shape[1:])), 0.3, 5))  # row-major order


@pytest.mark.parametrize("batch_bytes", [64 * 2**20, 2000])
def test_sample_pixels_reads_images_in_few_computations(monkeypatch, batch_bytes):
    import dask
    import xarray as xr

    from pixelflowsom import _sampling, sample_pixels

    rng = np.random.default_rng(0)
    arrays = [rng.random((3, 40, 50)) for _ in range(5)]
    images = [
        xr.DataArray(da.from_array(a, chunks=(1, 16, 16)), dims=("c", "y", "x"), coords={"c": ["a", "b", "c"]})
        for a in arrays
    ]
    calls = []
    compute = dask.compute

    def counting(*args, **kwargs):
        calls.append(len(args))
        return compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", counting)
    monkeypatch.setattr(_sampling, "_BATCH_BYTES", batch_bytes)  # 5 images of 200 sampled pixels x 3 x 8 bytes
    sample = sample_pixels(images, 0.1, channels=["c", "a"], random_state=0)
    # One computation for all images; with small batches, several, none returning much more than a batch.
    assert len(calls) == 1 if batch_bytes > 1e6 else 2 <= len(calls) <= 5 * 200 * 3 * 8 // batch_bytes + 1
    for i, array in enumerate(arrays):
        rows = sample.image_index == i
        y, x = sample.coords[rows].T
        np.testing.assert_array_equal(sample.values[rows], array[[2, 0]][:, y, x].T)
    assert _sampling.sample_size(40 * 50, 0.1) * 5 == sample.n_samples


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": 0}, ValueError, r"fraction=0 must be a number in \(0, 1\]"),
        ({"fraction": True}, ValueError, r"fraction=True must be a number"),
        ({"fraction": 0.5, "channels": ["a", "z"]}, KeyError, r"\['z'\] not found in image at position 0"),
        ({"fraction": 0.5, "channels": ["a", "a"]}, ValueError, "must name at least one channel, each once"),
        ({"fraction": 0.001}, ValueError, "samples no pixel; raise fraction to at least"),
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
    expected = values[positions][:, sample.coords[:, 0], sample.coords[:, 1]].T.astype(np.float64)
    np.testing.assert_array_equal(sample.values, expected)
    assert sample.values.T.flags.c_contiguous
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
    np.testing.assert_array_equal(
        sample.values, values[[3, 0]][:, sample.coords[:, 0], sample.coords[:, 1]].T.astype(np.float64)
    )
