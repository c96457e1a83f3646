"""The harpy.im.flowsom contract (../shared/CONTRACT.md), point by point, on synthetic SpatialData."""

import os
from pathlib import Path

import anndata as ad
import dask.array as da
import flowsom
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
import xarray as xr
from spatialdata.models import Image2DModel, Image3DModel, Labels2DModel
from spatialdata.transformations import Identity, Scale, get_transformation

import pixelflowsom.harpy as hp
from pixelflowsom._synthetic import make_synthetic_image

from .conftest import image_reference

CHANNELS = [f"marker_{i:02d}" for i in range(6)]


def image_element(shape=(90, 110), seed=0, nan_corner=True, chunks=None):
    image, _ = make_synthetic_image(shape, n_channels=6, n_phenotypes=4, seed=seed)
    values = image.values.copy()
    if nan_corner:
        values[(slice(None), *(slice(0, 3) for _ in shape))] = np.nan
        values[(1, *(s // 2 for s in shape))] = np.nan
    dims = ("c", "y", "x") if len(shape) == 2 else ("c", "z", "y", "x")
    model = Image2DModel if len(shape) == 2 else Image3DModel
    chunks = chunks or dict.fromkeys(dims[1:], 40) | {"c": 6}
    return model.parse(
        values,
        dims=dims,
        c_coords=CHANNELS,
        chunks=chunks,
        transformations={"global": Identity(), "microns": Scale([0.5, 0.5], axes=("y", "x"))}
        if len(shape) == 2
        else None,
    )


def make_sdata():
    return sd.SpatialData(
        images={"a": image_element(seed=0), "b": image_element(seed=1), "other": image_element((30, 40), seed=2)}
    )


@pytest.fixture
def sdata():
    return make_sdata()


@pytest.fixture
def backed(tmp_path):
    path = tmp_path / "store.zarr"
    make_sdata().write(path)
    return sd.read_zarr(path)


def run(sdata, images="a", clusters="a_clusters", metaclusters="a_metaclusters", **kwargs):
    params = {"n_clusters": 4, "fraction": 0.3, "xdim": 5, "ydim": 5} | kwargs
    return hp.im.flowsom(sdata, images, clusters, metaclusters, **params)


def nan_mask(element):
    return np.isnan(np.asarray(element.values)).any(axis=0)


def level0(element):
    """The full-resolution array of a labels or image element (a DataArray, or a multiscale DataTree)."""
    if isinstance(element, xr.DataTree):
        return next(iter(element["scale0"].ds.data_vars.values()))
    return element


def assert_labels_right(sdata, fsom, mapping, image, clusters, metaclusters, channels=None):
    """The written labels equal an expectation the adapter did not produce.

    SOM labels: the float64 brute-force nearest node (1-based, lowest on ties) of every pixel of
    ``image.sel(c=channels)`` among the returned ``fsom.model.codes``; metaclusters: the returned ``mapping`` of those.
    """
    codes = np.asarray(fsom.model.codes)
    node_metacluster = mapping.loc[np.arange(1, len(codes) + 1)].to_numpy() - 1
    expected = image_reference(level0(sdata.images[image]), codes, node_metacluster, channels)
    for layer, name in enumerate((clusters, metaclusters)):
        written = level0(sdata.labels[name])
        assert written.dtype == np.uint8 if len(codes) < 256 else np.uint16
        np.testing.assert_array_equal(written.values, expected[layer], err_msg=name)
    return expected


def snapshot(path):
    """Every file under a store with its size and modification time: a failed call must leave it as it was."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).rglob("*") if p.is_file()
    }


# ----------------------------------------------------------------------------- what is written


def test_labels_written_with_contract_properties(sdata):
    out, fsom, mapping = run(sdata)
    assert out is sdata
    clusters, metaclusters = sdata.labels["a_clusters"], sdata.labels["a_metaclusters"]
    for labels in (clusters, metaclusters):
        assert labels.dims == ("y", "x")
        assert labels.shape == (90, 110)
        assert labels.dtype == np.uint8
        assert labels.data.compute().dtype == np.uint8  # declared dtype == computed dtype
        assert get_transformation(labels, get_all=True) == get_transformation(sdata.images["a"], get_all=True)
    nodes, metas = assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters")
    nan = nan_mask(sdata.images["a"])
    assert (nodes[nan] == 0).all()
    assert (metas[nan] == 0).all()
    assert nodes[~nan].min() >= 1
    assert set(np.unique(metas[~nan])) == {1, 2, 3, 4}


def test_mapping_shape(sdata):
    _, fsom, mapping = run(sdata)
    assert isinstance(mapping, pd.Series)
    assert mapping.name == "metaclustering"
    assert mapping.dtype == np.int64
    assert mapping.index.dtype == np.int64
    assert mapping.index.name is None
    np.testing.assert_array_equal(mapping.index, np.arange(1, 26))
    np.testing.assert_array_equal(mapping.to_numpy(), fsom.model._y_codes + 1)
    assert set(mapping) == {1, 2, 3, 4}
    # Independent: flowsom's default metaclustering (average linkage) of the returned codes.
    from sklearn.cluster import AgglomerativeClustering

    expected = AgglomerativeClustering(n_clusters=4, linkage="average").fit_predict(fsom.model.codes)
    np.testing.assert_array_equal(mapping.to_numpy(), expected + 1)


def test_several_images_with_chunks_tuple_and_uint16(sdata):
    _, fsom, mapping = run(
        sdata, ["a", "other"], ["ca", "co"], ["ma", "mo"], chunks=(6, 32, 48), xdim=16, ydim=16, n_clusters=5
    )
    assert_labels_right(sdata, fsom, mapping, "a", "ca", "ma")
    assert_labels_right(sdata, fsom, mapping, "other", "co", "mo")
    for name, shape in (("ca", (90, 110)), ("co", (30, 40)), ("ma", (90, 110)), ("mo", (30, 40))):
        labels = sdata.labels[name]
        assert labels.shape == shape
        assert labels.dtype == np.uint16  # the smallest holding 256 nodes
        assert labels.data.chunks[0][0] == min(32, shape[0])
        assert labels.data.chunks[1][0] == min(48, shape[1])
        assert labels.values.dtype == np.uint16


@pytest.mark.parametrize(
    "channels", [["marker_04", "marker_01"], ["marker_05", "marker_00", "marker_03", "marker_02"], "marker_03"]
)
def test_channel_subsets_and_orders(sdata, channels):
    _, fsom, mapping = run(sdata, channels=channels)
    wanted = [channels] if isinstance(channels, str) else channels
    assert list(fsom.get_cell_data().var_names) == wanted
    assert fsom.model.codes.shape == (25, len(wanted))
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters", wanted)


def test_default_channels_are_all_of_the_first_image(sdata):
    _, fsom, mapping = run(sdata)
    assert list(fsom.get_cell_data().var_names) == CHANNELS
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters", CHANNELS)


def test_int_channel_coordinates(sdata):
    int_sdata = sd.SpatialData(
        images={
            "a": Image2DModel.parse(sdata.images["a"].values, dims=("c", "y", "x"), c_coords=[10, 11, 12, 13, 14, 15])
        }
    )
    _, fsom_int, mapping = run(int_sdata, channels=[14, 11])
    assert list(fsom_int.get_cell_data().var_names) == ["14", "11"]
    assert_labels_right(int_sdata, fsom_int, mapping, "a", "a_clusters", "a_metaclusters", [14, 11])
    _, fsom, _ = run(sdata, channels=["marker_04", "marker_01"])
    np.testing.assert_array_equal(fsom_int.model.codes, fsom.model.codes)  # ints select by label, not position


def test_images_storing_channels_in_different_orders(sdata):
    reordered = sdata.images["b"].isel(c=[3, 5, 0, 2, 1, 4])
    sdata.images["b_reordered"] = Image2DModel.parse(
        reordered.data, dims=("c", "y", "x"), c_coords=list(reordered.c.values)
    )
    channels = ["marker_02", "marker_05", "marker_01"]
    _, fsom, mapping = run(sdata, ["a", "b_reordered"], ["ca", "cb"], ["ma", "mb"], channels=channels)
    assert_labels_right(sdata, fsom, mapping, "a", "ca", "ma", channels)
    assert_labels_right(sdata, fsom, mapping, "b_reordered", "cb", "mb", channels)
    cells = fsom.get_cell_data()
    rows = (cells.obs["fov_labels"] == "b_reordered").to_numpy()
    y, x = cells.obsm["spatial"][rows].T
    np.testing.assert_array_equal(cells.X[rows], sdata.images["b"].sel(c=channels).values[:, y, x].T)


def test_uint16_image(sdata):
    values = np.nan_to_num(sdata.images["a"].values * 1000).astype(np.uint16)
    ints = sd.SpatialData(images={"a": Image2DModel.parse(values, dims=("c", "y", "x"), c_coords=CHANNELS)})
    _, fsom, mapping = run(ints, channels=["marker_03", "marker_00"])
    assert_labels_right(ints, fsom, mapping, "a", "a_clusters", "a_metaclusters", ["marker_03", "marker_00"])


@pytest.mark.parametrize("use_backed", [False, True])
def test_scale_factors_make_multiscale_labels(sdata, backed, use_backed):
    from skimage.transform import resize

    target = backed if use_backed else sdata
    channels = ["marker_05", "marker_02"]
    _, fsom, mapping = run(target, scale_factors=[2, 2], channels=channels)
    expected = assert_labels_right(target, fsom, mapping, "a", "a_clusters", "a_metaclusters", channels)
    for layer, name in enumerate(("a_clusters", "a_metaclusters")):
        labels = target.labels[name]
        assert isinstance(labels, xr.DataTree)
        assert sorted(labels.children) == ["scale0", "scale1", "scale2"]
        # scale1 halves 90 x 110 exactly: skimage's nearest-neighbour downsampling of the expected level 0.
        scale1 = labels["scale1"]["image"]
        assert scale1.dtype == np.uint8
        half = resize(expected[layer], (45, 55), order=0, mode="reflect", anti_aliasing=False, preserve_range=True)
        np.testing.assert_array_equal(scale1.values, half.astype(np.uint8), err_msg=name)
        # scale2 halves 45 x 55 chunk by chunk (odd sizes round per chunk): every pixel is a pixel of its footprint.
        scale2 = labels["scale2"]["image"].values
        assert scale2.shape == (22, 27)
        for i, j in np.ndindex(scale2.shape):
            y, x = int(i * 45 / 22), int(j * 55 / 27)
            window = half[max(0, y - 1) : y + 3, max(0, x - 1) : x + 3]
            assert scale2[i, j] in window, (name, i, j)
    if use_backed:  # the store read anew holds the same pyramid
        reread = sd.read_zarr(target.path)
        for name in ("a_clusters", "a_metaclusters"):
            for scale in ("scale0", "scale1", "scale2"):
                np.testing.assert_array_equal(
                    reread.labels[name][scale]["image"].values, target.labels[name][scale]["image"].values
                )


def test_3d_images():
    sdata = sd.SpatialData(images={"vol": image_element((4, 30, 40), chunks={"c": 6, "z": 2, "y": 20, "x": 20})})
    channels = ["marker_03", "marker_00", "marker_04"]
    _, fsom, mapping = hp.im.flowsom(
        sdata, "vol", "vc", "vm", n_clusters=3, xdim=4, ydim=4, fraction=0.5, channels=channels, chunks=(6, 3, 16, 32)
    )
    assert sdata.labels["vc"].dims == ("z", "y", "x")
    assert sdata.labels["vm"].shape == (4, 30, 40)
    assert sdata.labels["vm"].data.chunks == ((3, 1), (16, 14), (32, 8))
    assert fsom.get_cell_data().obsm["spatial"].shape[1] == 3
    assert_labels_right(sdata, fsom, mapping, "vol", "vc", "vm", channels)


def test_reproducible_whatever_the_chunking(sdata):
    _, fsom, mapping = run(sdata)
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters")
    rechunked = sd.SpatialData(images={"a": image_element(seed=0, chunks={"c": 1, "y": 13, "x": 110})})
    run(rechunked, chunks=(6, 29, 31))
    np.testing.assert_array_equal(rechunked["a_clusters"].values, sdata["a_clusters"].values)
    np.testing.assert_array_equal(rechunked["a_metaclusters"].values, sdata["a_metaclusters"].values)


# ----------------------------------------------------------------------------- the returned FlowSOM object


def test_fsom_cell_data(sdata):
    _, fsom, _ = run(
        sdata, ["a", "b"], ["ca", "cb"], ["ma", "mb"], instance_key="id", region_key="img", spatial_key="xy"
    )
    assert isinstance(fsom, flowsom.FlowSOM)
    cells = fsom.get_cell_data()
    n_a = int(0.3 * 90 * 110) - int(nan_mask(sdata.images["a"])[cells.obsm["xy"][:0, 0]].sum())
    assert list(cells.var_names) == CHANNELS
    np.testing.assert_array_equal(cells.obs["id"], np.arange(cells.n_obs))
    assert isinstance(cells.obs["img"].dtype, pd.CategoricalDtype)
    assert list(cells.obs["img"].cat.categories) == ["a", "b"]
    coords = cells.obsm["xy"]
    assert coords.dtype == np.int64
    assert coords.shape == (cells.n_obs, 2)
    for name in ("a", "b"):
        rows = (cells.obs["img"] == name).to_numpy()
        y, x = coords[rows].T
        np.testing.assert_array_equal(cells.X[rows], sdata.images[name].values[:, y, x].T)
        assert np.isfinite(cells.X[rows]).all()
        assert len(np.unique(y * 1000 + x)) == rows.sum()
    # different images get different samples
    ya = coords[(cells.obs["img"] == "a").to_numpy()]
    yb = coords[(cells.obs["img"] == "b").to_numpy()]
    assert not np.array_equal(ya[:50], yb[:50])
    assert n_a > 0
    for key in ("clustering", "metaclustering"):
        assert isinstance(cells.obs[key].dtype, pd.CategoricalDtype)
    clustering = cells.obs["clustering"].astype(int).to_numpy()
    np.testing.assert_array_equal(cells.obs["metaclustering"].astype(int), fsom.model._y_codes[clustering])
    d = np.linalg.norm(cells.X - fsom.model.codes[clustering], axis=1)
    np.testing.assert_allclose(cells.obs["distance_to_bmu"], d, rtol=1e-10)
    assert cells.uns["n_nodes"] == 25
    assert cells.uns["n_metaclusters"] == 4
    assert cells.var["cols_used"].dtype == int


def test_fsom_model_and_cluster_data(sdata):
    _, fsom, _ = run(sdata)
    model = fsom.model
    assert isinstance(model, flowsom.models.FlowSOMEstimator)
    assert model._is_fitted
    assert model.codes.shape == (25, 6)
    assert model._y_codes.dtype.kind == "i"
    clusters = fsom.get_cluster_data()
    assert clusters.n_obs == 25
    np.testing.assert_array_equal(clusters.obsm["codes"], model.codes)
    np.testing.assert_array_equal(clusters.obs["metaclustering"], model._y_codes)
    for key in ("grid", "layout", "cv_values", "sd_values", "mad_values"):
        assert key in clusters.obsm
    for key in ("metacluster_MFIs", "outliers", "graph", "xdim", "ydim"):
        assert key in clusters.uns
    assert clusters.obs["percentages"].sum() == pytest.approx(1.0)
    # the SOM's labels and distances of the sample (reused from the fit, not recomputed) are its codes' own
    som, cells = model.cluster_model, fsom.get_cell_data()
    labels, distances = som.labels_.copy(), som.distances.copy()
    np.testing.assert_array_equal(labels, cells.obs["clustering"].astype(int))
    np.testing.assert_array_equal(model.cluster_labels_, labels)
    np.testing.assert_array_equal(som.predict(cells.X), labels)
    np.testing.assert_allclose(som.distances, distances, rtol=1e-12)
    # flowsom's own plots and new_data work on it
    import matplotlib

    matplotlib.use("Agg")
    flowsom.pl.plot_stars(fsom)
    new = fsom.new_data(ad.AnnData(fsom.get_cell_data().X[:50].copy(), var=fsom.get_cell_data().var[[]]))
    assert new.get_cell_data().n_obs == 50


def test_flowsom_model_class_matches_real_flowsom(sdata):
    """With model= the SOM trains with flowsom's class: everything equals flowsom.FlowSOM on the same sample."""
    _, fsom, mapping = run(sdata, model=flowsom.models.FlowSOMEstimator, random_state=7)
    cells = fsom.get_cell_data()
    reference = flowsom.FlowSOM(
        ad.AnnData(np.asarray(cells.X).copy(), var=pd.DataFrame(index=cells.var_names)),
        n_clusters=4,
        xdim=5,
        ydim=5,
        seed=7,
    )
    np.testing.assert_allclose(fsom.model.codes, reference.model.codes)
    np.testing.assert_array_equal(fsom.model._y_codes, reference.model._y_codes)
    ref_cells, ref_clusters = reference.get_cell_data(), fsom.get_cluster_data()
    np.testing.assert_array_equal(cells.obs["clustering"].astype(int), ref_cells.obs["clustering"])
    np.testing.assert_array_equal(cells.obs["metaclustering"].astype(int), ref_cells.obs["metaclustering"])
    # The sample holds the image's float32 values (as harpy's table does): flowsom measures their distances in float32
    # arithmetic, ours are the exact float64 distances.
    assert cells.X.dtype == np.float32
    np.testing.assert_allclose(cells.obs["distance_to_bmu"], ref_cells.obs["distance_to_bmu"], rtol=1e-6)
    reference_clusters = reference.get_cluster_data()
    np.testing.assert_allclose(ref_clusters.X, reference_clusters.X, rtol=1e-10)
    np.testing.assert_array_equal(ref_clusters.obs["percentages"], reference_clusters.obs["percentages"])
    pd.testing.assert_frame_equal(ref_clusters.uns["outliers"], reference_clusters.uns["outliers"], check_dtype=False)
    pd.testing.assert_frame_equal(ref_clusters.uns["metacluster_MFIs"], reference_clusters.uns["metacluster_MFIs"])
    np.testing.assert_array_equal(mapping.to_numpy(), reference.model._y_codes + 1)


def test_batch_model_class(sdata):
    channels = ["marker_05", "marker_01", "marker_03"]
    _, fsom, mapping = run(sdata, model=flowsom.models.BatchFlowSOMEstimator, channels=channels)
    assert isinstance(fsom.model, flowsom.models.BatchFlowSOMEstimator)
    assert isinstance(fsom.model.cluster_model, flowsom.models.batch.BatchSOMEstimator)
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters", channels)


def test_metacluster_options_are_flowsoms(sdata):
    from sklearn.cluster import AgglomerativeClustering

    _, fsom, mapping = run(sdata, linkage="complete")
    assert fsom.model.metacluster_model.linkage == "complete"
    expected = AgglomerativeClustering(n_clusters=4, linkage="complete").fit_predict(fsom.model.codes)
    np.testing.assert_array_equal(mapping.to_numpy(), expected + 1)
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters")


# ----------------------------------------------------------------------------- backed stores, overwrite, client


@pytest.mark.parametrize("persist_intermediate", [True, False])
def test_backed_written_read_back_lazily_nothing_left(backed, persist_intermediate):
    path = Path(backed.path)
    before = set(os.listdir(path.parent))
    channels = ["marker_01", "marker_04", "marker_00"]
    _, fsom, mapping = run(
        backed,
        ["a", "b"],
        ["ca", "cb"],
        ["ma", "mb"],
        channels=channels,
        persist_intermediate=persist_intermediate,
        write_intermediate=not persist_intermediate,
    )
    assert set(os.listdir(path.parent)) == before  # no temporary folder left
    assert sorted(p.name for p in (path / "labels").iterdir() if p.is_dir()) == ["ca", "cb", "ma", "mb"]
    element = backed.labels["ma"]
    assert isinstance(element.data, da.Array)
    assert element.dtype == np.uint8
    for target in (backed, sd.read_zarr(path)):  # the elements read back lazily, and the store read anew
        assert_labels_right(target, fsom, mapping, "a", "ca", "ma", channels)
        assert_labels_right(target, fsom, mapping, "b", "cb", "mb", channels)


def test_backed_equals_in_memory(backed, sdata):
    _, fsom, mapping = run(backed, persist_intermediate=False)
    assert_labels_right(backed, fsom, mapping, "a", "a_clusters", "a_metaclusters")
    run(sdata)
    np.testing.assert_array_equal(backed["a_clusters"].values, sdata["a_clusters"].values)


@pytest.mark.parametrize("use_backed", [False, True])
def test_overwrite(sdata, backed, use_backed):
    target = backed if use_backed else sdata
    target.labels["a_metaclusters"] = Labels2DModel.parse(np.zeros((90, 110), np.uint8), dims=("y", "x"))
    if use_backed:
        target.write_element("a_metaclusters")
    with pytest.raises(ValueError, match="'a_metaclusters' already exists in sdata; pass overwrite=True"):
        run(target)
    assert "a_clusters" not in target
    assert (target["a_metaclusters"].values == 0).all()
    _, fsom, mapping = run(target, overwrite=True)
    assert_labels_right(target, fsom, mapping, "a", "a_clusters", "a_metaclusters")
    if use_backed:
        reopened = sd.read_zarr(target.path)
        assert_labels_right(reopened, fsom, mapping, "a", "a_clusters", "a_metaclusters")
        # Elements read back lazily from the store can be overwritten too (spatialdata refuses a plain overwrite).
        _, fsom, mapping = run(reopened, overwrite=True, n_clusters=3, channels=["marker_01", "marker_02"])
        assert set(mapping) == {1, 2, 3}
        assert_labels_right(
            sd.read_zarr(target.path), fsom, mapping, "a", "a_clusters", "a_metaclusters", ["marker_01", "marker_02"]
        )


def test_client_gives_right_and_identical_results(sdata):
    distributed = pytest.importorskip("distributed")
    channels = ["marker_03", "marker_05"]
    run(sdata, channels=channels)
    expected = sdata["a_clusters"].values
    other = make_sdata()
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        _, fsom, mapping = run(other, client=client, channels=channels)
        # In memory, the labels are persisted on the cluster: read them while it runs.
        assert_labels_right(other, fsom, mapping, "a", "a_clusters", "a_metaclusters", channels)
        np.testing.assert_array_equal(other["a_clusters"].values, expected)


# ----------------------------------------------------------------------------- errors, before any work


ERRORS = [
    ({"images": "nope"}, KeyError, r"Image element\(s\) \['nope'\] not found in sdata; available images: \['a', 'b'"),
    ({"channels": ["marker_00", "CD3"]}, KeyError, r"\['CD3'\] not found in image 'a'; available channels"),
    ({"images": ["a", "b"]}, ValueError, "Got 2 image_name, 1 output_cluster_labels_name"),
    # Parameters are PixelFlowSOM's, validated there (with its messages) before any pixel is read.
    ({"fraction": 0}, ValueError, r"'fraction' parameter of PixelFlowSOM must be a float in the range \(0.0, 1.0\]"),
    ({"fraction": 1.5}, ValueError, r"'fraction' parameter of PixelFlowSOM must be a float in the range"),
    ({"fraction": "all"}, ValueError, r"'fraction' parameter of PixelFlowSOM must be a float .* Got 'all' instead"),
    ({"n_clusters": 0}, ValueError, r"'n_clusters' parameter of PixelFlowSOM must be an int in the range \[1, inf\)"),
    ({"n_clusters": 26}, ValueError, r"n_clusters=26 is larger than the number of SOM nodes xdim \* ydim = 5 \* 5"),
    ({"xdim": 0}, ValueError, r"'xdim' parameter of PixelFlowSOM must be an int in the range \[1, inf\)"),
    ({"alpha": (0.05,)}, ValueError, r"alpha=\(0.05,\) must be two positive numbers"),
    ({"clusters": "same", "metaclusters": "same"}, ValueError, r"Output name\(s\) \['same'\] are used more than once"),
    ({"clusters": "b"}, ValueError, "Output name 'b' is already the name of a images element"),
    ({"chunks": (40, 40)}, ValueError, r"chunks=\(40, 40\) has 2 sizes; these images need 3: \(c, y, x\)"),
    ({"chunks": "big"}, ValueError, r"'chunks' parameter of PixelFlowSOM must be .* Got 'big' instead"),
    ({"chunks": (6, 40, -1)}, ValueError, r"chunks=\(40, -1\) must hold a positive int per spatial axis"),
    ({"colour": "red"}, TypeError, r"unexpected keyword argument\(s\) \['colour'\]"),
    ({"seed": 3}, TypeError, r"unexpected keyword argument\(s\) \['seed'\]"),
    ({"model": dict}, TypeError, "model=<class 'dict'> must be a flowsom.models.BaseFlowSOMEstimator subclass"),
    ({"images": 3}, TypeError, "image_name=3 must be a str or an iterable of str"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ERRORS)
@pytest.mark.parametrize("use_backed", [False, True])
def test_errors_leave_sdata_and_store_untouched(sdata, backed, use_backed, kwargs, error, match):
    target = backed if use_backed else sdata
    before_elements = sorted(name for _, name, _ in target.gen_elements())
    before_files = snapshot(target.path) if use_backed else None
    kwargs = dict(kwargs)
    args = {k: kwargs.pop(k) for k in ("images", "clusters", "metaclusters") if k in kwargs}
    with pytest.raises(error, match=match):
        run(target, **args, **kwargs)
    assert sorted(name for _, name, _ in target.gen_elements()) == before_elements
    if use_backed:
        assert snapshot(target.path) == before_files


def test_mixed_dimensionality_and_all_nan_errors(sdata):
    sdata.images["vol"] = image_element((3, 30, 40), chunks={"c": 6, "z": 3, "y": 30, "x": 40})
    with pytest.raises(ValueError, match="All images must have the same dims"):
        run(sdata, ["a", "vol"], ["c1", "c2"], ["m1", "m2"])
    empty = sdata.images["a"].copy(data=da.full((6, 90, 110), np.nan, chunks=(6, 45, 55)))
    sdata.images["empty"] = empty
    with pytest.raises(ValueError, match="sampled pixels of image 'empty' have a NaN"):
        run(sdata, "empty")
    assert not any(name.startswith(("c1", "m1", "a_")) for _, name, _ in sdata.gen_elements())


@pytest.mark.parametrize("som", ["hybrid", "online", "batch"])
def test_som_algorithm_option(sdata, som):
    _, fsom, mapping = run(sdata, som=som, channels=["marker_02", "marker_00"])
    assert fsom.model.cluster_model.som == som
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters", ["marker_02", "marker_00"])
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['som'\]"):
        run(sdata, som=som, model=flowsom.models.FlowSOMEstimator, clusters="x", metaclusters="y")


def test_failure_while_labels_compute_changes_nothing(backed, monkeypatch):
    from pixelflowsom.harpy import _flowsom as adapter

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(adapter, "build_flowsom", broken)
    path = Path(backed.path)
    before_files, before_folders = snapshot(path), set(os.listdir(path.parent))
    with pytest.raises(RuntimeError, match="boom"):
        run(backed, persist_intermediate=False)
    assert snapshot(path) == before_files
    assert set(os.listdir(path.parent)) == before_folders  # the temporary zarr folder is gone too
    assert "a_clusters" not in backed


def test_region_column_is_the_categorical_of_the_image_names():
    from pixelflowsom.harpy._flowsom import _regions

    images = ["zeta", "alpha", "mid", "unsampled"]
    index = np.array([0, 2, 1, 0, 2, 2])
    expected = pd.Categorical(np.asarray(images, dtype=object)[index])
    pd.testing.assert_extension_array_equal(_regions(images, index), expected)


@pytest.mark.parametrize("not_sdata", [{"a": 1}, None, "store.zarr"])
def test_sdata_must_be_spatialdata(not_sdata):
    with pytest.raises(TypeError, match="sdata must be a spatialdata.SpatialData object, got"):
        hp.im.flowsom(not_sdata, "a", "c", "m")


def test_auto_n_clusters(sdata):
    _, fsom, mapping = run(sdata, n_clusters="auto", max_clusters=10)
    k = fsom.get_cell_data().uns["n_metaclusters"]
    assert k == 4  # the four phenotypes of the synthetic images
    assert sorted(set(mapping)) == list(range(1, k + 1))
    assert fsom.model.metacluster_model.n_clusters == k
    assert_labels_right(sdata, fsom, mapping, "a", "a_clusters", "a_metaclusters")
    with pytest.raises(ValueError, match="max_clusters=30 is larger than the number of SOM nodes xdim"):
        run(sdata, n_clusters="auto", max_clusters=30, clusters="x", metaclusters="y")
