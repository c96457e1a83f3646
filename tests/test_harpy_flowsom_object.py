"""``build_flowsom`` gives the FlowSOM object that ``flowsom.FlowSOM.__init__`` gives, field by field."""

import copy
import warnings

import anndata as ad
import flowsom
import igraph as ig
import numpy as np
import pandas as pd
import pytest
from mudata import MuData

from pixelflowsom.harpy import _flowsom_object
from pixelflowsom.harpy._flowsom_object import build_flowsom

XDIM, YDIM, N_CLUSTERS, SEED = 6, 6, 4, 1
NAMES = ["CD3", "CD8", "CD20", "panCK", "DAPI"]
RTOL = 1e-10


def _sample(n=600, p=5, seed=7):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 5, size=(4, p))
    return centers[np.repeat(np.arange(4), n // 4)] + rng.normal(size=(n, p))


def _extras(n, seed=3):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "cell_ID": rng.integers(0, 50, n),
            "fov_labels": pd.Categorical(rng.choice(["fov0", "fov1"], n)),
        },
        index=pd.RangeIndex(n).astype(str),
    )
    return obs, {"spatial": rng.integers(0, 100, size=(n, 2))}


@pytest.fixture(scope="module")
def reference():
    """The real ``flowsom.FlowSOM`` of a sample with extra obs columns and an obsm slot, and its inputs."""
    X = _sample()
    obs, obsm = _extras(len(X))
    adata = ad.AnnData(X, obs=obs.copy(), obsm=copy.deepcopy(obsm))
    adata.var_names = NAMES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's, on flowsom's empty MuData
        ref = flowsom.FlowSOM(adata, n_clusters=N_CLUSTERS, xdim=XDIM, ydim=YDIM, seed=SEED)
    return ref, X, obs, obsm


def _outputs(model):
    """The positional arguments of ``build_flowsom`` after ``X`` and ``var_names``, from a fitted flowsom model."""
    return model.cluster_labels, model.metacluster_labels, model.distances, model.codes, model._y_codes


def _build(X, model, **kwargs):
    kwargs = {"xdim": XDIM, "ydim": YDIM, "n_clusters": N_CLUSTERS, "seed": SEED} | kwargs
    return build_flowsom(X, NAMES, *_outputs(model), model=model, **kwargs)


def _oracle(X, clustering, metaclustering, distances, node_metacluster, model, mad_allowed=4):
    """``FlowSOM.__init__`` for these labels: flowsom's ``read_input`` and ``_update_derived_values``."""
    model = copy.deepcopy(model)
    model.cluster_labels_ = clustering
    model.labels_ = metaclustering
    model.cluster_model.distances = distances
    model._y_codes = node_metacluster
    fsom = flowsom.FlowSOM.__new__(flowsom.FlowSOM)
    fsom.cols_to_use, fsom.mad_allowed, fsom.xdim, fsom.ydim = None, mad_allowed, XDIM, YDIM
    fsom.rlen, fsom.mst, fsom.alpha, fsom.seed, fsom.n_clusters = 10, 1, (0.05, 0.01), SEED, N_CLUSTERS
    fsom.model = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fsom.mudata = MuData({"cell_data": ad.AnnData(), "cluster_data": ad.AnnData()})
    adata = ad.AnnData(X)
    adata.var_names = NAMES
    fsom.read_input(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # flowsom's nanmean / median of all-NaN slices
        fsom._update_derived_values()
    return fsom


def _assert_value_equal(got, ref, where):
    if isinstance(ref, pd.DataFrame):
        pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=RTOL, atol=1e-12, obj=where)
    elif isinstance(ref, ig.Graph):
        assert isinstance(got, ig.Graph), where
        assert got.get_edgelist() == ref.get_edgelist(), where
        np.testing.assert_allclose(got.es["weight"], ref.es["weight"], rtol=RTOL, err_msg=where)
    elif isinstance(ref, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == ref.dtype, (where, got.dtype, ref.dtype)
        assert got.shape == ref.shape, where
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-12, equal_nan=True, err_msg=where)
        else:
            np.testing.assert_array_equal(got, ref, err_msg=where)
    else:
        assert type(got) is type(ref), (where, type(got), type(ref))
        assert got == ref, where


def _assert_same_anndata(got, ref, name):
    assert got.shape == ref.shape, name
    _assert_value_equal(got.X, ref.X, f"{name}.X")
    pd.testing.assert_index_equal(got.obs_names, ref.obs_names)
    pd.testing.assert_index_equal(got.var_names, ref.var_names)
    _assert_value_equal(got.obs, ref.obs, f"{name}.obs")
    _assert_value_equal(got.var, ref.var, f"{name}.var")
    for attr in ("obsm", "uns"):
        assert list(getattr(got, attr).keys()) == list(getattr(ref, attr).keys()), (name, attr)
        for key, value in getattr(ref, attr).items():
            _assert_value_equal(getattr(got, attr)[key], value, f"{name}.{attr}[{key!r}]")
    for attr in ("layers", "varm", "obsp", "varp"):
        assert len(getattr(got, attr)) == len(getattr(ref, attr)) == 0, (name, attr)


def assert_same_flowsom(got, ref):
    assert isinstance(got, flowsom.FlowSOM)
    assert type(got) is type(ref)
    np.testing.assert_array_equal(got.cols_to_use, ref.cols_to_use)
    assert type(got.cols_to_use) is type(ref.cols_to_use)
    for attr in ("mad_allowed", "xdim", "ydim", "rlen", "mst", "alpha", "seed", "n_clusters"):
        assert getattr(got, attr) == getattr(ref, attr), attr
    assert sorted(vars(got)) == sorted(vars(ref))
    assert list(got.mudata.mod) == list(ref.mudata.mod) == ["cell_data", "cluster_data"]
    assert got.mudata.shape == ref.mudata.shape
    _assert_same_anndata(got.get_cell_data(), ref.get_cell_data(), "cell_data")
    _assert_same_anndata(got.get_cluster_data(), ref.get_cluster_data(), "cluster_data")


def test_sample_has_empty_nodes(reference):
    ref = reference[0]
    counts = np.bincount(ref.model.cluster_labels, minlength=XDIM * YDIM)
    assert (counts == 0).any()
    assert (counts > 1).any()
    assert np.isnan(ref.get_cluster_data().obsm["mad_values"]).any()
    assert ref.get_cluster_data().uns["outliers"]["number_of_outliers"].sum() > 0


def test_matches_flowsom_constructor(reference):
    ref, X, obs, obsm = reference
    fsom = _build(X, ref.model, obs=obs, obsm=obsm)
    assert_same_flowsom(fsom, ref)
    assert fsom.model is ref.model
    assert list(fsom.get_cell_data().obs.columns) == [
        "cell_ID",
        "fov_labels",
        "clustering",
        "distance_to_bmu",
        "metaclustering",
    ]


def test_without_extras(reference):
    ref, X, _, _ = reference
    fsom = _build(X, ref.model)
    cell, cell_ref = fsom.get_cell_data(), ref.get_cell_data()
    assert list(cell.obs.columns) == ["clustering", "distance_to_bmu", "metaclustering"]
    assert len(cell.obsm) == 0
    pd.testing.assert_frame_equal(cell.obs, cell_ref.obs[list(cell.obs.columns)])
    _assert_same_anndata(fsom.get_cluster_data(), ref.get_cluster_data(), "cluster_data")


def test_extras_do_not_disturb_flowsom_fields(reference):
    ref, X, obs, obsm = reference
    extra = obs.reset_index(drop=True).assign(clustering=-1)  # positional; flowsom's columns win, as in FlowSOM
    before = extra.copy()
    fsom = _build(X, ref.model, obs=extra, obsm=obsm)
    cell = fsom.get_cell_data()
    pd.testing.assert_frame_equal(extra, before)
    pd.testing.assert_index_equal(cell.obs_names, ref.get_cell_data().obs_names)
    np.testing.assert_array_equal(cell.obs["cell_ID"], obs["cell_ID"])
    np.testing.assert_array_equal(cell.obs["clustering"], ref.model.cluster_labels)
    np.testing.assert_array_equal(cell.obsm["spatial"], obsm["spatial"])
    _assert_same_anndata(fsom.get_cluster_data(), ref.get_cluster_data(), "cluster_data")


def test_label_dtypes_are_flowsom_s(reference):
    ref, X, _, _ = reference
    clustering, metaclustering, distances, codes, node_metacluster = _outputs(ref.model)
    fsom = build_flowsom(
        X,
        np.array(NAMES),
        clustering.astype(np.int32),
        metaclustering.astype(float),
        distances.astype(np.float32).astype(np.float64),
        codes,
        node_metacluster.astype(np.int16),
        model=ref.model,
        xdim=XDIM,
        ydim=YDIM,
        n_clusters=N_CLUSTERS,
        seed=SEED,
    )
    obs = fsom.get_cell_data().obs
    assert obs["clustering"].dtype == obs["metaclustering"].dtype == np.int64
    assert obs["distance_to_bmu"].dtype == np.float64
    assert fsom.get_cluster_data().obs["metaclustering"].dtype == np.int64


@pytest.mark.parametrize("case", ["float32", "nan_values", "channel_blocks", "one_node", "mad_allowed_float"])
def test_matches_flowsom_derived_values(reference, case, monkeypatch):
    """Edge cases against flowsom's own ``_update_derived_values`` (``FlowSOM.__init__`` minus the training)."""
    ref, X, _, _ = reference
    clustering, metaclustering, distances, _, node_metacluster = _outputs(ref.model)
    mad_allowed = 4
    if case == "float32":
        X = X.astype(np.float32)
    elif case in ("nan_values", "channel_blocks"):
        X = X.copy()
        if case == "channel_blocks":  # contiguous channels, their statistics 2 channels at a time (2, 2, 1)
            X = np.asfortranarray(X)
            monkeypatch.setattr(_flowsom_object, "_BLOCK_BYTES", 8 * len(X) * 2)
        X[::7, 1] = np.nan
        X[clustering == clustering[0], 2] = np.nan  # a whole node NaN in one channel
        distances = distances.copy()
        distances[::11] = np.nan
    elif case == "one_node":  # every row in node 0: flowsom's outlier table is all integer 0
        clustering = np.zeros_like(clustering)
        metaclustering = np.full_like(metaclustering, node_metacluster[0])
    elif case == "mad_allowed_float":
        mad_allowed = 2.5
    expected = _oracle(X, clustering, metaclustering, distances, node_metacluster, ref.model, mad_allowed=mad_allowed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from our side
        got = build_flowsom(
            X,
            NAMES,
            clustering,
            metaclustering,
            distances,
            ref.model.codes,
            node_metacluster,
            model=ref.model,
            xdim=XDIM,
            ydim=YDIM,
            n_clusters=N_CLUSTERS,
            seed=SEED,
            mad_allowed=mad_allowed,
        )
    assert_same_flowsom(got, expected)
    if case == "one_node":
        assert (got.get_cluster_data().uns["outliers"].dtypes == np.int64).all()


def test_flowsom_methods_and_plots_run(reference):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, X, obs, obsm = reference
    fsom = _build(X, ref.model, obs=obs, obsm=obsm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # anndata's obs_keys deprecation, in flowsom
        np.testing.assert_array_equal(fsom.cluster_labels, ref.model.cluster_labels)
        np.testing.assert_array_equal(fsom.metacluster_labels, ref.model.metacluster_labels)
    outliers = fsom.test_outliers(mad_allowed=4).reset_index()
    pd.testing.assert_frame_equal(outliers, fsom.get_cluster_data().uns["outliers"], check_exact=False, rtol=RTOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mudata's and anndata's deprecations, from flowsom's copy
        assert_same_flowsom(fsom.copy(), ref.copy())  # mudata.copy() updates the global obs/var
    fig = flowsom.pl.plot_stars(fsom)
    assert fig is not None
    plt.close("all")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"X": np.zeros(5)}, "2D"),
        ({"var_names": NAMES[:-1]}, "var_names"),
        ({"var_names": ["a"] * 5}, "unique"),
        ({"clustering": np.full(600, XDIM * YDIM)}, "clustering"),
        ({"clustering": np.full(600, 0.5)}, "integers"),
        ({"distances": np.zeros(3)}, "distances"),
        ({"node_metacluster": np.zeros(3, dtype=int)}, "node_metacluster"),
        ({"codes": np.zeros((XDIM * YDIM, 5))}, "model.codes"),
        ({"obs": pd.DataFrame({"a": np.arange(3)})}, "obs"),
    ],
)
def test_invalid_input(reference, change, match):
    ref, X, _, _ = reference
    keys = ["clustering", "metaclustering", "distances", "codes", "node_metacluster"]
    args = dict(zip(keys, _outputs(ref.model), strict=True))
    args = {"X": X, "var_names": NAMES, **args, "model": ref.model, "xdim": XDIM, "ydim": YDIM} | change
    with pytest.raises(ValueError, match=match):
        build_flowsom(**args, n_clusters=N_CLUSTERS)
