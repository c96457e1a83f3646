"""Lazy labelling with dask: the model payload, tables and image blocks, checked against a brute-force reference."""

import pickle

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy.spatial.distance import cdist

from pixelflowsom._inference import SOMModel, label_image, label_table


def brute_force(X, codes):
    """float64 brute-force argmin, lowest node on ties."""
    return cdist(np.asarray(X, dtype=np.float64), codes, "sqeuclidean").argmin(axis=1)


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
    nodes = brute_force(X, model.codes)
    expected = {
        None: np.column_stack([nodes, model.node_metacluster[nodes]]),
        0: nodes,
        1: model.node_metacluster[nodes],
    }[column]
    np.testing.assert_array_equal(eager, expected)


@pytest.mark.parametrize("layers", ["both", "metacluster"])
def test_label_image_equals_brute_force(layers):
    rng = np.random.default_rng(5)
    values = rng.random((3, 2, 37, 41)).astype(np.float32)
    values[1, 0, 5, 6] = np.nan
    image = xr.DataArray(da.from_array(values, chunks=(1, 1, 16, 20)), dims=("c", "z", "y", "x"))
    model = SOMModel(rng.random((7, 3)), rng.integers(0, 3, 7))
    out = label_image(image, model, layers=layers, n_ids=7).values
    table = values.reshape(3, -1).T
    finite = np.isfinite(table).all(axis=1)
    nodes = np.zeros(len(table), np.int64)
    nodes[finite] = brute_force(table[finite], model.codes) + 1
    metas = np.where(nodes > 0, model.node_metacluster[nodes - 1] + 1, 0)
    expected = metas if layers == "metacluster" else np.stack([nodes, metas])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)


def test_label_image_refuses_other_channel_counts():
    model = SOMModel(np.zeros((4, 3)), np.zeros(4, np.int64))
    image = xr.DataArray(np.zeros((5, 8, 8), np.float32), dims=("c", "y", "x"))
    with pytest.raises(ValueError, match="5 channel\\(s\\) of the image are selected"):
        label_image(image, model, n_ids=4)
    with pytest.raises(ValueError, match="2 channel\\(s\\) of the image are selected"):
        label_image(image, model, n_ids=4, channels=[0, 1])
    with pytest.raises(ValueError, match="positions in 0..4"):
        label_image(image, model, n_ids=4, channels=[0, 1, 5])


@pytest.mark.parametrize(
    "chunks",
    [None, (5, 16, 16), (2, 16, 16), (1, 8, 32)],  # numpy-backed; one channel chunk; channels in several chunks
)
@pytest.mark.parametrize("channels", [[4, 0, 2], [1, 1, 3], [3, 2, 1]])
def test_label_image_by_channel_positions_equals_brute_force_on_the_selection(chunks, channels):
    rng = np.random.default_rng(11)
    values = rng.random((5, 30, 44)).astype(np.float32)
    values[channels[0], 3, 4] = np.nan  # a NaN in a selected channel: label 0
    values[[c for c in range(5) if c not in channels][0], 7, 8] = np.nan  # in an unselected one: no effect
    data = values if chunks is None else da.from_array(values, chunks=chunks)
    image = xr.DataArray(data, dims=("c", "y", "x"))
    model = SOMModel(rng.random((6, 3)), rng.integers(0, 4, 6))
    out = label_image(image, model, n_ids=6, channels=channels).values
    table = values[channels].reshape(3, -1).T
    finite = np.isfinite(table).all(axis=1)
    nodes = np.zeros(len(table), np.int64)
    nodes[finite] = brute_force(table[finite], model.codes) + 1
    metas = np.where(nodes > 0, model.node_metacluster[nodes - 1] + 1, 0)
    np.testing.assert_array_equal(out.reshape(2, -1), np.stack([nodes, metas]))
    assert out[0, 3, 4] == 0
    assert out[0, 7, 8] > 0


def test_image_block_task_refuses_other_channel_counts():
    # Whatever builds the graph, the block task itself checks the block against the model before the kernel runs.
    import dask

    model = SOMModel(np.zeros((4, 3)), np.zeros(4, np.int64))
    image = xr.DataArray(da.zeros((5, 8, 8), chunks=(5, 4, 4), dtype=np.float32), dims=("c", "y", "x"))
    out = label_image(image, dask.delayed(model), n_ids=4)
    with pytest.raises(ValueError, match="5 channel\\(s\\) of an image block are selected"):
        out.compute()
