import doctest
import subprocess
import sys

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from pixelflowsom import _tables
from pixelflowsom._tables import metacluster_table


def reference_table(X, ids, channels, counts=None, reduce=np.nanmedian):
    """The table computed the slow, obvious way: a loop over the 1-based ids (0: background)."""
    n = max(int(ids.max()), 0 if counts is None else len(counts) - 1)
    rows = []
    for k in range(1, n + 1):
        block = X[ids == k]
        if counts is None:
            pixels = len(block)
        else:
            pixels = int(counts[k]) if k < len(counts) else 0
        values = [reduce(block[:, j]) if np.isfinite(block[:, j]).any() else np.nan for j in range(X.shape[1])]
        rows.append([pixels, *values])
    table = pd.DataFrame(rows, columns=["pixels", *channels], index=pd.Index(range(1, n + 1), name="metacluster"))
    table.insert(1, "fraction", table["pixels"] / table["pixels"].sum())
    return table


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=3000)  # 0: background
    ids[ids == 4] = 5  # metacluster 4 is missing from the sample
    X = rng.normal(size=(3000, 4)) + ids[:, None] * np.array([1.0, -2.0, 0.5, 0.0])
    X[rng.random(X.shape) < 0.05] = np.nan
    X[ids == 2, 3] = np.nan  # a channel without any value in metacluster 2
    return X, ids, ["CD3", "CD20", "panCK", "DNA"]


def test_table_equals_numpy_reference(data):
    X, ids, channels = data
    table = metacluster_table(X, ids, channels)
    expected = reference_table(X, ids, channels)
    pd.testing.assert_frame_equal(table, expected, check_index_type=False)
    assert list(table.columns) == ["pixels", "fraction", *channels]
    assert table.index.name == "metacluster"
    assert list(table.index) == [1, 2, 3, 4, 5]
    assert table["pixels"].dtype == np.int64
    assert table.loc[4, "pixels"] == 0
    assert table.loc[4, channels].isna().all()  # no row of metacluster 4: NaN medians
    assert np.isnan(table.loc[2, "DNA"])  # all-NaN channel
    assert table["fraction"].sum() == pytest.approx(1.0)
    assert table["pixels"].sum() == np.count_nonzero(ids)  # the background is left out

    mean = metacluster_table(X, ids, channels, agg="mean")
    pd.testing.assert_frame_equal(mean, reference_table(X, ids, channels, reduce=np.nanmean), check_index_type=False)


def test_counts_are_the_image_pixels(data):
    X, ids, channels = data
    counts = np.array([50_000, 1_000, 200, 30, 0, 7_000, 3])  # 1..6; 4 has no pixel, 6 is not in the sample
    table = metacluster_table(X, ids, channels, counts=counts)
    expected = reference_table(X, ids, channels, counts=counts)
    pd.testing.assert_frame_equal(table, expected, check_index_type=False)
    assert list(table.index) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(table["pixels"], counts[1:])
    np.testing.assert_allclose(table["fraction"], counts[1:] / counts[1:].sum())  # background (counts[0]) excluded
    assert table.loc[6, channels].isna().all()
    # The medians come from X whatever the counts.
    pd.testing.assert_frame_equal(table.loc[:5, channels], metacluster_table(X, ids, channels).loc[:, channels])

    # A bincount shorter than the largest id of the sample: ids past its end have 0 pixels.
    table = metacluster_table(X, ids, channels, counts=counts[:3])
    assert list(table.index) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(table["pixels"], [1_000, 200, 0, 0, 0])
    np.testing.assert_allclose(table["fraction"], [1_000 / 1_200, 200 / 1_200, 0, 0, 0])

    # Counts of a label image; float and dask counts work too.
    labels = np.random.default_rng(1).integers(0, 7, size=(40, 50))
    bincount = np.bincount(labels.ravel())
    for counts_input in (bincount, bincount.astype(float), list(bincount), da.from_array(bincount, chunks=3)):
        table = metacluster_table(X, ids, channels, counts=counts_input)
        np.testing.assert_array_equal(table["pixels"], bincount[1:])


def test_zero_based_ids_give_the_same_one_based_table(data):
    X, ids, channels = data
    keep = ids > 0
    zero_based = metacluster_table(X[keep], ids[keep] - 1, channels, one_based=False)
    pd.testing.assert_frame_equal(zero_based, metacluster_table(X, ids, channels))
    assert zero_based.index[0] == 1
    counts = np.array([9, 4, 3, 2, 1, 0])
    pd.testing.assert_frame_equal(
        metacluster_table(X[keep], ids[keep] - 1, channels, counts=counts, one_based=False),
        metacluster_table(X, ids, channels, counts=counts),
    )


def test_dataframe_dask_and_default_channel_names(data):
    X, ids, channels = data
    expected = metacluster_table(X, ids, channels)
    frame = pd.DataFrame(X, columns=channels)
    pd.testing.assert_frame_equal(metacluster_table(frame, ids, None), expected)
    pd.testing.assert_frame_equal(
        metacluster_table(da.from_array(X, chunks=500), da.from_array(ids, chunks=500), channels), expected
    )
    positions = metacluster_table(X, ids, None)
    assert list(positions.columns) == ["pixels", "fraction", "0", "1", "2", "3"]
    np.testing.assert_array_equal(positions.to_numpy(), expected.to_numpy())
    single = metacluster_table(X[:, :1], ids, "CD3")
    assert list(single.columns) == ["pixels", "fraction", "CD3"]


def test_the_heatmap_shows_the_table(data):
    """The heatmap and the table share the aggregation: the unscaled heatmap is the table's channel columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pixelflowsom import pl

    X, ids, channels = data
    counts = np.array([50_000, 1_000, 200, 30, 0, 7_000, 3])
    table = metacluster_table(X, ids, channels, counts=counts)
    fig = pl.phenotype_heatmap(X, ids, channels, counts=counts, scale=None)
    in_sample = metacluster_table(X, ids, channels)["pixels"].reindex(table.index, fill_value=0) > 0
    shown = table[(table["pixels"] > 0) | in_sample]  # with image pixels or sampled rows: all but 4
    assert list(shown.index) == [1, 2, 3, 5, 6]
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.ma.filled(ax.images[0].get_array(), np.nan), shown[channels].to_numpy().T)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in shown.index]
    assert [t.get_text() for t in ax.child_axes[0].get_xticklabels()] == [f"{c:,}" for c in shown["pixels"]]
    plt.close(fig)


ERRORS = [
    (lambda: metacluster_table(np.ones(4), [1, 1, 1, 1], ["a"]), ValueError, r"2D \(n_pixels"),
    (lambda: metacluster_table(np.ones((4, 2)), [1, 1, 1], None), ValueError, "3 ids but X has 4 rows"),
    (lambda: metacluster_table(np.ones((4, 2)), [[1, 1, 1, 1]], None), ValueError, "1D"),
    (lambda: metacluster_table(np.ones((4, 2)), [1, 1, 2, 2], ["a"]), ValueError, "1 channel"),
    (lambda: metacluster_table(np.ones((4, 2)), [1, 1, 2, 2], None, agg="max"), ValueError, "agg='max'"),
    (lambda: metacluster_table(np.ones((4, 2)), [1, 1, 2, 2.5], None), TypeError, "integer ids"),
    (lambda: metacluster_table(np.ones((4, 2)), [1, 1, 2, -2], None), ValueError, "non-negative"),
    (lambda: metacluster_table(np.ones((4, 2)), [0, 0, 0, 0], None), ValueError, "one_based=False"),
    (lambda: metacluster_table(np.full((2, 2), "a"), [1, 1], None), TypeError, "numeric"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], ["a", "a"]), ValueError, r"\['a'\] would make clashing"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], ["pixels", "b"]), ValueError, "not named 'pixels'"),
    (lambda: metacluster_table(np.ones((2, 1)), [1, 1], ["fraction"]), ValueError, "clashing"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], None, counts=[0, -3]), ValueError, "found -3"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], None, counts=[]), ValueError, r"got shape \(0,\)"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], None, counts=[[0, 1]]), ValueError, "np.bincount"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], None, counts=[0, 0.5]), TypeError, "non-integer"),
    (lambda: metacluster_table(np.ones((2, 2)), [1, 1], None, counts=[0, np.nan]), TypeError, "non-integer"),
]


@pytest.mark.parametrize(("call", "error", "match"), ERRORS)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_heatmap_rejects_what_the_table_rejects_with_the_same_messages():
    from pixelflowsom import pl

    for args in [(np.ones((4, 2)), [1, 1, 2, 2.5]), (np.ones((4, 2)), [0, 0, 0, 0]), (np.ones(4), [1, 1, 1, 1])]:
        with pytest.raises((ValueError, TypeError)) as table_error:
            metacluster_table(*args, None)
        with pytest.raises(table_error.type) as heatmap_error:
            pl.phenotype_heatmap(*args)
        assert str(heatmap_error.value) == str(table_error.value)


def test_no_labelled_pixel_in_counts_gives_nan_fractions():
    table = metacluster_table(np.ones((2, 1)), [1, 1], ["a"], counts=[5, 0])
    assert table["pixels"].tolist() == [0]
    assert np.isnan(table.loc[1, "fraction"])


def test_docstring_examples():
    result = doctest.testmod(_tables, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_tables_do_not_import_matplotlib():
    code = "import sys, pixelflowsom._tables; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_names_column_follows_fraction():
    X = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    table = metacluster_table(X, [1, 1, 2], ["CD3", "CD20"], names={2: "B cells"})
    assert table.columns.tolist() == ["pixels", "fraction", "name", "CD3", "CD20"]
    assert table["name"].tolist() == ["", "B cells"]
    assert "name" not in metacluster_table(X, [1, 1, 2], ["CD3", "CD20"], names={}).columns
    with pytest.raises(ValueError, match="must be unique and not named"):
        metacluster_table(X, [1, 1, 2], ["name", "CD20"], names={1: "x"})


def test_label_counts_equal_numpys_bincount_whatever_the_chunks():
    import dask

    labels = np.random.default_rng(0).integers(0, 7, size=(50, 70)).astype(np.uint8)
    for chunks in ((50, 70), (16, 30), (7, 70)):
        counts = dask.compute(_tables.label_counts(da.from_array(labels, chunks=chunks)))[0]
        np.testing.assert_array_equal(counts, np.bincount(labels.ravel()))
