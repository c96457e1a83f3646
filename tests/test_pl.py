import doctest
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import colorcet
import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from sklearn.exceptions import NotFittedError

from pixelflowsom import PixelFlowSOM, pl
from pixelflowsom._synthetic import make_synthetic_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted():
    """A tiny seeded model, its image (with a NaN corner: background) and the computed metacluster image."""
    image, _ = make_synthetic_image((64, 64), n_channels=5, n_phenotypes=3, seed=0)
    model = PixelFlowSOM(n_clusters=3, xdim=4, ydim=4, fraction=0.5, random_state=0).fit(image)
    holey = image.copy()
    holey[:, :8, :8] = np.nan
    labels = model.predict(holey).values
    return model, image, labels


@pytest.fixture(scope="module")
def fsom():
    import anndata
    import flowsom

    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 3.0]])
    X = centres[rng.integers(0, 3, 300)] + rng.normal(0, 0.3, size=(300, 4))
    adata = anndata.AnnData(X)
    adata.var_names = ["CD3", "CD20", "panCK", "Ki67"]
    return flowsom.FlowSOM(adata, n_clusters=3, xdim=3, ydim=3, seed=0)


def shown(fig):
    """The label image array and its AxesImage of a metacluster_image figure."""
    image = fig.axes[0].images[0]
    return np.asarray(image.get_array()), image


def legend_texts(fig):
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def legend_colors(fig):
    return np.array([handle.get_facecolor() for handle in fig.axes[0].get_legend().legend_handles])


def displayed_color(image, label_id):
    return np.asarray(image.cmap(image.norm(label_id)))


def check_png(path):
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def zscore_reference(X, ids, reduce=np.median):
    """channels x metaclusters: per metacluster statistic, z-scored per channel (population std)."""
    unique = np.unique(ids[ids > 0])
    values = np.array([reduce(X[ids == k], axis=0) for k in unique])
    return ((values - values.mean(axis=0)) / values.std(axis=0)).T, values.T, unique


def minmax_reference(X, ids, reduce=np.median):
    """channels x metaclusters: per metacluster statistic, scaled per channel to [0, 1] (no constant channel)."""
    unique = np.unique(ids[ids > 0])
    values = np.array([reduce(X[ids == k], axis=0) for k in unique]).T
    low, high = values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
    return (values - low) / (high - low), unique


def srgb_to_cielab(rgb):
    """CIELAB (D65 white) of sRGB colours in [0, 1], shape (n, 3): the textbook formulas."""
    rgb = np.asarray(rgb, dtype=float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.00000, 1.08883])
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.column_stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])])


# ------------------------------------------------------------------------------------------ metacluster_image


def test_metacluster_image_returns_figure_legend_and_png(fitted, tmp_path):
    _, _, labels = fitted
    fig = pl.metacluster_image(labels, save=tmp_path / "labels.png")
    assert isinstance(fig, Figure)
    check_png(tmp_path / "labels.png")
    assert legend_texts(fig) == ["background", "metacluster 1", "metacluster 2", "metacluster 3"]
    colors = legend_colors(fig)
    assert len({tuple(c) for c in colors}) == 4  # all distinct
    np.testing.assert_array_equal(colors[0], [0, 0, 0, 1])  # background black
    data, _ = shown(fig)
    np.testing.assert_array_equal(data, labels)  # small image: shown as is
    assert fig.axes[0].get_title() == "Metaclusters"


def test_background_is_distinct_from_every_metacluster(fitted):
    _, _, labels = fitted
    _, image = shown(pl.metacluster_image(labels))
    background = displayed_color(image, 0)
    for k in (1, 2, 3):
        assert not np.allclose(displayed_color(image, k), background)
        np.testing.assert_allclose(displayed_color(image, k), pl._metacluster_colors([k])[0])


def test_numpy_dataarray_dask_and_spatialdata_inputs_show_the_same(fitted):
    from spatialdata.models import Labels2DModel

    _, _, labels = fitted
    inputs = [
        labels,
        xr.DataArray(labels, dims=("y", "x")),
        xr.DataArray(da.from_array(labels, chunks=16), dims=("y", "x")),
        xr.DataArray(labels.T, dims=("x", "y")),  # transposed dims are put back in order
        Labels2DModel.parse(da.from_array(labels, chunks=32), dims=("y", "x")),
    ]
    for labels_input in inputs:
        data, _ = shown(pl.metacluster_image(labels_input))
        np.testing.assert_array_equal(data, labels)


def test_large_image_is_strided_nearest_neighbour():
    labels = np.random.default_rng(0).integers(0, 7, size=(300, 200), dtype=np.uint16)
    fig = pl.metacluster_image(labels, max_pixels=1000)
    data, image = shown(fig)
    step = 8  # the smallest stride leaving at most 1000 pixels: ceil(sqrt(300 * 200 / 1000))
    assert data.shape == (38, 25)
    np.testing.assert_array_equal(data, labels[::step, ::step])  # exact label values, never interpolated
    assert image.get_interpolation() == "nearest"
    # The axes stay in full-resolution pixel coordinates.
    left, right, bottom, top = image.get_extent()
    assert (left, top) == (-0.5, -0.5)
    assert right >= 199.5
    assert bottom >= 299.5
    assert f"1 in {step} pixels per axis" in fig.axes[0].get_title()


def test_dask_labels_read_only_the_strided_blocks():
    computed = set()

    def count_blocks(block, block_info=None):
        if block_info is not None:
            computed.add(tuple(block_info[0]["chunk-location"]))
        return block

    ones = da.ones((4000, 4000), chunks=100, dtype=np.uint8)
    labels = ones.map_blocks(count_blocks, dtype=np.uint8, meta=np.array((), dtype=np.uint8))
    data, _ = shown(pl.metacluster_image(labels, max_pixels=100))
    assert data.shape == (10, 10)
    assert len(computed) == 100  # of 1600 blocks: only those holding every 400th row and column

    data, _ = shown(pl.metacluster_image(xr.DataArray(ones, dims=("y", "x"))))
    assert data.shape == (1000, 1000)  # the default max_pixels: every 4th pixel of 16 million


def test_multiscale_reads_the_coarsest_scale_with_enough_pixels():
    scales = {
        f"scale{i}": xr.DataArray(np.full((64 >> i, 64 >> i), i + 1, dtype=np.uint8), dims=("y", "x")).to_dataset(
            name="image"
        )
        for i in range(3)
    }
    tree = xr.DataTree.from_dict(scales)
    for max_pixels, value, shape in [(1000, 2, (16, 16)), (256, 3, (16, 16)), (100, 3, (8, 8)), (10_000, 1, (64, 64))]:
        fig = pl.metacluster_image(tree, max_pixels=max_pixels)
        data, image = shown(fig)
        assert data.shape == shape
        assert np.all(data == value)
        assert tuple(image.get_extent()) == (-0.5, 63.5, 63.5, -0.5)  # scale0 pixel coordinates
        plt.close(fig)


def test_spatialdata_multiscale_labels(fitted):
    from spatialdata.models import Labels2DModel

    _, _, labels = fitted
    tree = Labels2DModel.parse(da.from_array(labels, chunks=32), dims=("y", "x"), scale_factors=[2, 2])
    data, _ = shown(pl.metacluster_image(tree))
    np.testing.assert_array_equal(data, labels)  # small: scale0
    data, _ = shown(pl.metacluster_image(tree, max_pixels=1024))
    assert data.shape == (32, 32)  # scale1 has exactly 1024 pixels


def test_3d_labels_show_the_middle_plane():
    labels = np.repeat(np.arange(1, 6, dtype=np.uint8), 64).reshape(5, 8, 8)
    fig = pl.metacluster_image(labels)
    data, _ = shown(fig)
    assert np.all(data == 3)
    assert "z = 2 of 5" in fig.axes[0].get_title()
    data, _ = shown(pl.metacluster_image(xr.DataArray(labels, dims=("z", "y", "x"))))
    assert np.all(data == 3)


def test_many_metaclusters_get_distinct_colours_and_a_multicolumn_legend():
    labels = np.arange(45, dtype=np.uint8).reshape(5, 9)
    fig = pl.metacluster_image(labels)
    assert len(legend_texts(fig)) == 45
    assert fig.axes[0].get_legend()._ncols == 3
    colors = pl._metacluster_colors(np.arange(200))
    assert len({tuple(np.round(c, 6)) for c in colors}) == 200
    # The colour of metacluster k does not depend on how many there are.
    np.testing.assert_array_equal(pl._metacluster_colors(np.arange(1, 30)), colors[1:30])
    np.testing.assert_allclose(pl._metacluster_colors([1, 2, 3])[:, :3], colorcet.glasbey_bw_minc_20[:3])


def test_palette_first_40_colours_are_distinct_and_far_from_black_white_and_grey():
    colours = pl._palette(40)
    assert colours.shape == (40, 3)
    lab = srgb_to_cielab(colours)
    distance = np.sqrt(((lab[:, None, :] - lab[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(distance, np.inf)
    assert distance.min() > 18  # CIELAB Delta E 1976; ~2.3 is a just noticeable difference
    black, white = srgb_to_cielab([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert np.sqrt(((lab - black) ** 2).sum(axis=1)).min() > 25  # the background
    assert np.sqrt(((lab - white) ** 2).sum(axis=1)).min() > 25  # the figure
    assert np.hypot(lab[:, 1], lab[:, 2]).min() > 10  # no greys (chroma)
    # One fixed sequence: metacluster k keeps its colour whatever n; the 256 glasbey colours then repeat.
    np.testing.assert_array_equal(pl._palette(7), colours[:7])
    np.testing.assert_array_equal(pl._palette(300)[:40], colours)
    np.testing.assert_array_equal(pl._palette(300)[256:], pl._palette(44))
    assert len({tuple(c) for c in pl._palette(256)}) == 256
    assert not pl._palette(5).flags.writeable  # the cached array cannot be changed by a caller


def test_drawing_on_given_axes(fitted):
    _, _, labels = fitted
    fig, axes = plt.subplots(1, 2)
    assert pl.metacluster_image(labels, ax=axes[1], title="mine") is fig
    assert axes[1].get_title() == "mine"
    assert len(axes[1].images) == 1
    assert len(axes[0].images) == 0


# ------------------------------------------------------------------------------------------ phenotype_heatmap


def test_heatmap_equals_numpy_reference(fitted, tmp_path):
    _, image, labels = fitted
    X = image.values.reshape(5, -1).T.astype(np.float64)
    ids = np.zeros(X.shape[0], dtype=np.int64)  # labels of the image without NaN
    ids[:] = fitted[0].predict(image).values.ravel()
    channels = [str(c) for c in image.coords["c"].values]
    fig = pl.phenotype_heatmap(X, ids, channels, save=tmp_path / "heatmap.png")
    assert isinstance(fig, Figure)
    check_png(tmp_path / "heatmap.png")
    ax = fig.axes[0]
    heat = ax.images[0]
    scaled, unique = minmax_reference(X, ids)
    np.testing.assert_allclose(np.asarray(heat.get_array()), scaled, atol=1e-12)
    assert (heat.norm.vmin, heat.norm.vmax) == (0.0, 1.0)
    assert heat.cmap.name.startswith("viridis")  # sequential
    assert fig.axes[1].get_ylabel() == "median intensity, scaled per channel to [0, 1]"
    assert [t.get_text() for t in ax.get_yticklabels()] == channels
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in unique]
    counts = np.bincount(ids)[1:]
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == [f"{c:,}" for c in counts]
    assert top.get_xlabel() == "pixels in the sample"
    assert len(fig.axes) == 2  # the heatmap and its colorbar

    z, raw, _ = zscore_reference(X, ids)
    fig = pl.phenotype_heatmap(X, ids, channels, scale="zscore")
    heat = fig.axes[0].images[0]
    np.testing.assert_allclose(np.asarray(heat.get_array()), z, atol=1e-12)
    assert heat.norm.vmin == -heat.norm.vmax  # diverging, centred at 0
    assert fig.axes[1].get_ylabel() == "median intensity, z-scored per channel"
    heat = pl.phenotype_heatmap(X, ids, channels, scale=None).axes[0].images[0]
    np.testing.assert_allclose(np.asarray(heat.get_array()), raw)
    heat = pl.phenotype_heatmap(X, ids, channels, agg="mean").axes[0].images[0]
    np.testing.assert_allclose(np.asarray(heat.get_array()), minmax_reference(X, ids, np.mean)[0], atol=1e-12)
    heat = pl.phenotype_heatmap(X, ids, channels, agg="mean", scale="zscore").axes[0].images[0]
    np.testing.assert_allclose(np.asarray(heat.get_array()), zscore_reference(X, ids, np.mean)[0], atol=1e-12)


def test_heatmap_minmax_rows_span_exactly_zero_to_one():
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 8, size=2000)
    X = rng.lognormal(size=(2000, 6)) * rng.uniform(0.1, 50, size=6) + ids[:, None] * rng.normal(size=6)
    data = np.asarray(pl.phenotype_heatmap(X, ids).axes[0].images[0].get_array())
    scaled, unique = minmax_reference(X, ids)
    assert data.shape == (6, 7)
    np.testing.assert_allclose(data, scaled, atol=1e-12)
    assert np.all(data.min(axis=1) == 0.0)
    assert np.all(data.max(axis=1) == 1.0)
    # A constant channel (every metacluster has the same median) is 0, and a NaN median stays missing.
    X[:, 0] = 2.0
    X[ids == 5, 1] = np.nan
    data = np.ma.filled(pl.phenotype_heatmap(X, ids).axes[0].images[0].get_array(), np.nan)
    assert np.all(data[0] == 0.0)
    assert np.isnan(data[1, 4])
    assert np.nanmin(data[1]) == 0.0
    assert np.nanmax(data[1]) == 1.0


def test_heatmap_counts_on_the_top_axis():
    X = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 2.0], [5.0, 5.0]])
    sample_ids = np.array([1, 1, 2, 2, 4])
    counts = np.array([7, 1200, 35, 10, 4])  # image pixels of 1..4 (index 0: background); 3 is not in the sample
    fig = pl.phenotype_heatmap(X, sample_ids, ["CD3", "CD20"], counts=counts)
    ax = fig.axes[0]
    top = ax.child_axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["1,200", "35", "10", "4"]
    assert top.get_xlabel() == "pixels in the image(s)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4"]
    data = np.ma.filled(ax.images[0].get_array(), np.nan)
    # Metacluster 3 has image pixels but no sampled one: a missing (grey) column.
    np.testing.assert_allclose(data, [[0.4, 0.0, np.nan, 1.0], [0.0, 0.6, np.nan, 1.0]])
    # 0-based sample ids: counts stay indexed by the 1-based ids of the label image.
    fig = pl.phenotype_heatmap(X, sample_ids - 1, ["CD3", "CD20"], counts=counts, one_based=False)
    assert [t.get_text() for t in fig.axes[0].child_axes[0].get_xticklabels()] == ["1,200", "35", "10", "4"]
    # A shorter bincount (the image had no pixel of metacluster 4) counts 0 for the ids past its end.
    fig = pl.phenotype_heatmap(X, sample_ids, counts=counts[:3])
    assert [t.get_text() for t in fig.axes[0].child_axes[0].get_xticklabels()] == ["1,200", "35", "0"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4"]
    # Counts of a label image, as the docstring says.
    labels = np.array([[0, 1, 1], [2, 2, 4]])
    fig = pl.phenotype_heatmap(X, sample_ids, counts=np.bincount(labels.ravel()))
    assert [t.get_text() for t in fig.axes[0].child_axes[0].get_xticklabels()] == ["2", "2", "1"]


def test_names_label_the_metaclusters(fitted):
    model, _, labels = fitted
    names = {1: "tumour", np.int64(3): "stroma", 9: "unused"}
    X = np.arange(12, dtype=float).reshape(6, 2)
    ax = pl.phenotype_heatmap(X, [1, 1, 2, 2, 3, 3], names=names).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 tumour", "2", "3 stroma"]
    assert legend_texts(pl.metacluster_image(labels, names=names)) == [
        "background",
        "metacluster 1 tumour",
        "metacluster 2",
        "metacluster 3 stroma",
    ]
    assert legend_texts(pl.som_grid(model, names=names)) == [
        "metacluster 1 tumour",
        "metacluster 2",
        "metacluster 3 stroma",
    ]


def test_heatmap_zero_based_background_nan_and_dataframe():
    import pandas as pd

    X = np.array([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0], [0.0, 4.0, 5.0], [0.0, 2.0, 5.0], [9.0, 9.0, 9.0], [np.nan, 1, 5]])
    one_based = np.array([1, 1, 2, 2, 0, 2])  # row 4 is background, row 5 has a NaN
    expected = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]  # medians [2, 0, 5], [0, 2, 5]; a constant channel is 0
    frame = pd.DataFrame(X, columns=["CD3", "CD20", "DNA"])
    for fig in (
        pl.phenotype_heatmap(frame, one_based),
        pl.phenotype_heatmap(
            np.delete(X, 4, axis=0), np.delete(one_based, 4) - 1, ["CD3", "CD20", "DNA"], one_based=False
        ),
    ):
        ax = fig.axes[0]
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["CD3", "CD20", "DNA"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
        assert [t.get_text() for t in ax.child_axes[0].get_xticklabels()] == ["2", "3"]
        z = pl.phenotype_heatmap(frame, one_based, scale="zscore").axes[0].images[0].get_array()
        np.testing.assert_allclose(np.asarray(z), [[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])  # constant: 0 too


def test_heatmap_tick_colours_are_the_metacluster_colours():
    X = np.arange(12, dtype=float).reshape(6, 2)
    ax = pl.phenotype_heatmap(X, [1, 1, 4, 4, 12, 12]).axes[0]
    boxes = [t.get_bbox_patch().get_facecolor() for t in ax.get_xticklabels()]
    np.testing.assert_allclose(boxes, pl._metacluster_colors([1, 4, 12]))


def test_heatmap_from_fsom(fsom):
    cells = fsom.get_cell_data()
    X = np.asarray(cells.X)
    ids = np.asarray(cells.obs["metaclustering"]).astype(int) + 1
    fig = pl.phenotype_heatmap_from_fsom(fsom)
    ax = fig.axes[0]
    scaled, unique = minmax_reference(X, ids)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), scaled, atol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["CD3", "CD20", "panCK", "Ki67"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in unique]
    assert [t.get_text() for t in ax.child_axes[0].get_xticklabels()] == [str(c) for c in np.bincount(ids)[1:]]
    assert list(unique) == [1, 2, 3]
    ax = pl.phenotype_heatmap_from_fsom(fsom, channels=["Ki67", "CD3"]).axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), scaled[[3, 0]], atol=1e-12)
    z, _, _ = zscore_reference(X, ids)
    ax = pl.phenotype_heatmap_from_fsom(fsom, scale="zscore").axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), z, atol=1e-12)
    ax = pl.phenotype_heatmap_from_fsom(fsom, counts=[0, 10, 20, 30], names={2: "B cell"}).axes[0]
    assert [t.get_text() for t in ax.child_axes[0].get_xticklabels()] == ["10", "20", "30"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2 B cell", "3"]
    with pytest.raises(ValueError, match="not found"):
        pl.phenotype_heatmap_from_fsom(fsom, channels=["CD8"])


# ------------------------------------------------------------------------------------------ som_grid


def test_som_grid_pixelflowsom(fitted, tmp_path):
    model, _, labels = fitted
    fig = pl.som_grid(model, save=tmp_path / "grid.png")
    assert isinstance(fig, Figure)
    check_png(tmp_path / "grid.png")
    nodes = fig.axes[0].collections[0]
    assert len(nodes.get_paths()) == 16
    assert legend_texts(fig) == ["metacluster 1", "metacluster 2", "metacluster 3"]
    assert [t.get_text() for t in fig.axes[0].texts] == [str(k) for k in model.node_metacluster_ + 1]
    # Metacluster k has the same colour in the SOM grid and in the label image.
    _, image = shown(pl.metacluster_image(labels))
    for node, face in enumerate(nodes.get_facecolors()):
        np.testing.assert_allclose(face, displayed_color(image, model.node_metacluster_[node] + 1))


def test_som_grid_node_positions_and_sizes(fitted):
    model, image, _ = fitted
    sizes = np.bincount(model.transform(image).values[0].ravel() - 1, minlength=16)
    fig = pl.som_grid(model, sizes=sizes)
    paths = fig.axes[0].collections[0].get_paths()
    centres = np.array([(p.vertices.max(axis=0) + p.vertices.min(axis=0)) / 2 for p in paths])
    radii = np.array([(p.vertices.max(axis=0) - p.vertices.min(axis=0))[0] / 2 for p in paths])
    node = np.arange(16)
    np.testing.assert_allclose(centres, np.column_stack([node // 4, node % 4]), atol=1e-9)
    expected = np.maximum(0.42 * np.sqrt(sizes / sizes.max()), 0.06)
    np.testing.assert_allclose(radii, expected, rtol=1e-6)
    assert len(fig.axes[0].texts) == 0  # no ids written into sized circles
    assert "area ~ pixels" in fig.axes[0].get_title()


def test_som_grid_fsom(fsom):
    clusters = fsom.get_cluster_data()
    fig = pl.som_grid(fsom)
    nodes = fig.axes[0].collections[0]
    assert len(nodes.get_paths()) == 9
    expected = pl._metacluster_colors(np.asarray(clusters.obs["metaclustering"]).astype(int) + 1)
    np.testing.assert_allclose(nodes.get_facecolors(), expected)
    radii = np.array([np.ptp(p.vertices[:, 0]) / 2 for p in nodes.get_paths()])
    percentages = np.asarray(clusters.obs["percentages"], dtype=float)
    np.testing.assert_allclose(radii, np.maximum(0.42 * np.sqrt(percentages / percentages.max()), 0.06), rtol=1e-6)
    assert len(legend_texts(fig)) == len(np.unique(clusters.obs["metaclustering"]))


# ------------------------------------------------------------------------------------------ errors


def _labels():
    return np.ones((4, 4), dtype=np.uint8)


ERRORS = [
    (lambda: pl.metacluster_image(np.ones(4, dtype=int)), ValueError, "2D .* or 3D"),
    (lambda: pl.metacluster_image(np.ones((2, 2, 2, 2), dtype=int)), ValueError, "got 4 dimension"),
    (lambda: pl.metacluster_image(np.ones((4, 4))), TypeError, "integer label ids"),
    (lambda: pl.metacluster_image(-_labels().astype(int)), ValueError, "non-negative"),
    (lambda: pl.metacluster_image(np.ones((0, 4), dtype=int)), ValueError, "empty"),
    (lambda: pl.metacluster_image(_labels(), max_pixels=0), ValueError, "max_pixels=0"),
    (lambda: pl.metacluster_image(_labels(), max_pixels=2.5), ValueError, "positive integer"),
    (
        lambda: pl.metacluster_image(xr.DataArray(np.ones((2, 4, 4), dtype=int), dims=("label", "y", "x"))),
        ValueError,
        r"sel\(label='metacluster'\)",
    ),
    (lambda: pl.metacluster_image(xr.DataArray(_labels(), dims=("a", "b"))), ValueError, "dims"),
    (lambda: pl.metacluster_image(xr.DataTree()), ValueError, "no scales"),
    (lambda: pl.metacluster_image(_labels(), ax="left"), TypeError, "matplotlib Axes"),
    (lambda: pl.metacluster_image(_labels(), save=1), TypeError, "file path"),
    (lambda: pl.phenotype_heatmap(np.ones(4), [1, 1, 1, 1]), ValueError, r"2D \(n_pixels"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 1]), ValueError, "3 ids but X has 4 rows"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [[1, 1, 1, 1]]), ValueError, "1D"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], ["a"]), ValueError, "1 channel"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], agg="max"), ValueError, "agg='max'"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2.5]), TypeError, "integer ids"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, -2]), ValueError, "non-negative"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [0, 0, 0, 0]), ValueError, "one_based=False"),
    (lambda: pl.phenotype_heatmap(np.full((2, 2), "a"), [1, 1]), TypeError, "numeric"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], scale="zscores"), ValueError, "scale='zscores'"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], scale=True), ValueError, "'minmax', 'zscore' or None"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], counts=[0, -1, 2]), ValueError, "found -1"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], counts=[[1, 2]]), ValueError, "np.bincount"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], counts=[0, 1.5]), TypeError, "non-integer"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], names=["a", "b"]), TypeError, "mapping"),
    (lambda: pl.phenotype_heatmap(np.ones((4, 2)), [1, 1, 2, 2], names={"a": "b"}), TypeError, "integer"),
    (lambda: pl.metacluster_image(_labels(), names={1.5: "b"}), TypeError, "integer metacluster ids"),
    (lambda: pl.phenotype_heatmap_from_fsom(np.ones((4, 2))), TypeError, "flowsom.FlowSOM"),
    (lambda: pl.som_grid(PixelFlowSOM()), NotFittedError, "not fitted"),
    (lambda: pl.som_grid("model"), TypeError, "fitted PixelFlowSOM or a flowsom.FlowSOM"),
]


@pytest.mark.parametrize(("call", "error", "match"), ERRORS)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("sizes", [[1, 2], np.full(16, -1.0), np.full(16, np.nan)])
def test_som_grid_bad_sizes(fitted, sizes):
    with pytest.raises(ValueError, match="16 .* finite non-negative"):
        pl.som_grid(fitted[0], sizes=sizes)


# ------------------------------------------------------------------------------------------ module


def test_docstring_examples():
    result = doctest.testmod(pl, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_pixelflowsom_import_does_not_import_matplotlib():
    code = "import sys, pixelflowsom; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
