"""PixelFlowSOM as a scikit-learn estimator on tables: numpy, pandas and dask."""

import dask
import dask.array as da
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from pixelflowsom import ConsensusClustering, PixelFlowSOM

from .conftest import make_blobs, nearest_reference


@parametrize_with_checks(
    [
        PixelFlowSOM(),
        PixelFlowSOM(n_clusters=2, xdim=3, ydim=3),
        PixelFlowSOM(n_clusters=3, xdim=4, ydim=4, som="batch", mst=2),
        PixelFlowSOM(n_clusters=2, xdim=3, ydim=2, som="online"),
        PixelFlowSOM(n_clusters="auto", xdim=3, ydim=3, max_clusters=5),
        ConsensusClustering(n_resamples=10),
    ]
)
@pytest.mark.filterwarnings("ignore:Only .* rows were sampled")
def test_sklearn_compatible(estimator, check):
    check(estimator)


def small_model(**kwargs):
    params = {"n_clusters": 4, "xdim": 5, "ydim": 5, "fraction": 0.5, "random_state": 0}
    return PixelFlowSOM(**{**params, **kwargs})


@pytest.mark.parametrize("som", ["hybrid", "online", "batch"])
@pytest.mark.parametrize("mst", [1, 2])
def test_recovers_separated_clusters(blobs, som, mst):
    X, y = blobs
    model = small_model(som=som, mst=mst).fit(X)
    assert adjusted_rand_score(y, model.labels_) == 1.0
    assert model.codes_.shape == (25, X.shape[1])
    assert model.node_metacluster_.shape == (25,)
    assert set(model.node_metacluster_) == {0, 1, 2, 3}
    np.testing.assert_array_equal(model.grid_, [(x, y) for x in range(5) for y in range(5)])
    assert model.n_samples_fit_ == int(0.5 * len(X))
    assert 0 < model.quantization_error_ < 1
    assert 1 <= model.n_iter_ <= 10 * mst + (3 if som == "hybrid" else 0)


def test_labels_equal_float64_nearest_node(blobs):
    X, _ = blobs
    model = small_model().fit(X)
    nodes = nearest_reference(X, model.codes_)  # independent: float64 brute force from the returned codes
    metas = model.node_metacluster_[nodes]
    out = model.transform(X)
    assert out.shape == (len(X), 2)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.column_stack([nodes, metas]))
    np.testing.assert_array_equal(model.predict(X), metas)
    np.testing.assert_array_equal(model.labels_, metas)
    np.testing.assert_array_equal(clone(model).fit_predict(X), metas)


def test_reproducible_and_seeded(blobs):
    X, _ = blobs
    a, b = small_model().fit(X), small_model().fit(X)
    np.testing.assert_array_equal(a.codes_, b.codes_)
    c = small_model(random_state=1).fit(X)
    assert not np.array_equal(a.codes_, c.codes_)
    # A RandomState instance is consumed, not reset: two fits with the same instance differ.
    rs = np.random.RandomState(0)
    model = small_model(random_state=rs)
    first = model.fit(X).codes_.copy()
    assert not np.array_equal(first, model.fit(X).codes_)


def test_does_not_touch_global_rng(blobs):
    X, _ = blobs
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    small_model().fit(X)
    assert np.random.random() == expected


def test_pandas_feature_names_and_set_output(blobs):
    X, _ = blobs
    df = pd.DataFrame(X, columns=[f"CD{i}" for i in range(X.shape[1])])
    model = small_model().fit(df)
    np.testing.assert_array_equal(model.feature_names_in_, df.columns)
    np.testing.assert_array_equal(model.get_feature_names_out(), ["som_node", "metacluster"])
    out = clone(model).set_output(transform="pandas").fit(df).transform(df)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["som_node", "metacluster"]
    pd.testing.assert_index_equal(out.index, df.index)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(df.rename(columns={"CD0": "CD99"}))
    with pytest.raises(ValueError, match="input_features is not equal"):
        model.get_feature_names_out(["a"] * X.shape[1])


def test_dask_arrays_lazy_and_equal_to_reference(blobs):
    X, _ = blobs
    dX = da.from_array(X, chunks=(97, 2))
    eager = small_model().fit(X)
    lazy = small_model().fit(dX)
    np.testing.assert_array_equal(lazy.codes_, eager.codes_)  # the sample does not depend on chunks
    nodes = nearest_reference(X, lazy.codes_)
    metas = lazy.node_metacluster_[nodes]
    pred = lazy.predict(dX)
    assert isinstance(pred, da.Array)
    assert pred.chunks == (dX.chunks[0],)
    np.testing.assert_array_equal(pred.compute(), metas)
    out = lazy.transform(dX)
    assert out.chunks == (dX.chunks[0], (2,))
    np.testing.assert_array_equal(out.compute(scheduler="threads"), np.column_stack([nodes, metas]))
    # labels_ covers the training rows only: the model holds no graph over X.
    assert isinstance(lazy.labels_, np.ndarray)
    assert len(lazy.sample_indices_) == lazy.n_samples_fit_ == int(0.5 * len(X))
    np.testing.assert_array_equal(lazy.labels_, metas[lazy.sample_indices_])
    fitted = small_model().fit_predict(dX)
    assert isinstance(fitted, da.Array)
    np.testing.assert_array_equal(fitted.compute(), metas)


def test_dask_fit_reads_only_sampled_chunks():
    X, _ = make_blobs(n=20_000, p=3)
    read = []

    def record(block, block_info=None):
        read.append(block_info[0]["chunk-location"][0])
        return block

    dX = da.from_array(X, chunks=(100, 3)).map_blocks(record, dtype=X.dtype)
    with dask.config.set(scheduler="synchronous"):
        model = PixelFlowSOM(n_clusters=2, xdim=2, ydim=2, fraction=0.001, random_state=0).fit(dX)
        n_read_by_fit = len(read)
    assert model.n_samples_fit_ == 20
    assert n_read_by_fit <= 20 < dX.numblocks[0]


def test_n_samples_trains_on_that_many_rows(blobs):
    X, _ = blobs
    model = small_model(fraction=None, n_samples=50).fit(X)
    assert model.n_samples_fit_ == 50
    lazy = small_model(fraction=None, n_samples=50).fit(da.from_array(X, chunks=(70, 5)))
    np.testing.assert_array_equal(lazy.codes_, model.codes_)
    assert len(lazy.sample_indices_) == 50
    assert small_model(fraction=None, n_samples=10**6).fit(X).n_samples_fit_ == len(X)  # every row, at most
    np.testing.assert_array_equal(model.labels_, model.node_metacluster_[nearest_reference(X, model.codes_)])


def test_dask_nan_rows_raise_when_computed(blobs):
    X, _ = blobs
    model = small_model().fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    lazy = model.predict(da.from_array(bad, chunks=100))
    with pytest.raises(ValueError, match="NaN or infinity"):
        lazy.compute()


def test_pipeline_and_dask_ml(blobs):
    from dask_ml.preprocessing import StandardScaler as DaskStandardScaler
    from dask_ml.wrappers import ParallelPostFit

    X, y = blobs
    pipe = Pipeline([("scale", StandardScaler()), ("som", small_model())]).fit(X)
    assert adjusted_rand_score(y, pipe.predict(X)) == 1.0

    dX = da.from_array(X, chunks=(150, -1))
    dpipe = Pipeline([("scale", DaskStandardScaler()), ("som", small_model())]).fit(dX)
    labels = dpipe.predict(dX)
    assert isinstance(labels, da.Array)
    assert adjusted_rand_score(y, labels.compute()) == 1.0

    wrapped = ParallelPostFit(small_model()).fit(X)
    np.testing.assert_array_equal(wrapped.predict(dX).compute(), wrapped.estimator.predict(X))


def test_joblib_round_trip(blobs, tmp_path):
    X, _ = blobs
    model = small_model(metaclustering=ConsensusClustering(n_resamples=5)).fit(X)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))
    np.testing.assert_array_equal(loaded.codes_, model.codes_)


def test_metaclustering_parameter(blobs):
    X, y = blobs
    template = ConsensusClustering(n_clusters=99, n_resamples=10)
    model = small_model(metaclustering=template).fit(X)
    assert template.n_clusters == 99  # cloned, not modified
    assert model.metaclustering_.n_clusters == 4
    assert isinstance(model.metaclustering_.random_state, int)  # seeded from random_state
    assert adjusted_rand_score(y, model.labels_) == 1.0


def test_single_metacluster(blobs):
    X, _ = blobs
    model = small_model(n_clusters=1).fit(X)
    np.testing.assert_array_equal(model.labels_, 0)
    model = PixelFlowSOM(n_clusters=1, xdim=1, ydim=1, random_state=0).fit(X)
    np.testing.assert_allclose(model.codes_[0], X.mean(0), atol=0.5)


def test_warns_when_fewer_samples_than_nodes():
    X, _ = make_blobs(n=40, p=2)
    with pytest.warns(UserWarning, match="Only 4 rows were sampled for 100 SOM nodes"):
        PixelFlowSOM(random_state=0).fit(X)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"fraction": 0}, ValueError, "'fraction' parameter"),
        ({"fraction": 1.5}, ValueError, "'fraction' parameter"),
        ({"fraction": "all"}, ValueError, "'fraction' parameter"),
        ({"xdim": 0}, ValueError, "'xdim' parameter"),
        ({"ydim": 2.5}, ValueError, "'ydim' parameter"),
        ({"rlen": 0}, ValueError, "'rlen' parameter"),
        ({"mst": 0}, ValueError, "'mst' parameter"),
        ({"n_clusters": 0}, ValueError, "'n_clusters' parameter"),
        ({"n_clusters": 26}, ValueError, r"n_clusters=26 is larger than the number of SOM nodes xdim \* ydim = 5 \* 5"),
        ({"n_clusters": "many"}, ValueError, "'n_clusters' parameter"),
        ({"n_clusters": "auto", "max_clusters": 30}, ValueError, "max_clusters=30 is larger than the number of SOM"),
        ({"n_clusters": "auto", "max_clusters": 1}, ValueError, "'max_clusters' parameter"),
        ({"n_clusters": "auto", "xdim": 1, "ydim": 1}, ValueError, 'n_clusters="auto" needs a SOM of at least 2'),
        ({"alpha": (0.05,)}, ValueError, r"alpha=\(0.05,\) must be two positive numbers"),
        ({"alpha": (0.05, -1)}, ValueError, "alpha=.* must be two positive numbers"),
        ({"alpha": "fast"}, ValueError, "'alpha' parameter of PixelFlowSOM must be an array-like"),
        ({"som": "kohonen"}, ValueError, "'som' parameter"),
        ({"metaclustering": "kmeans"}, ValueError, "'metaclustering' parameter"),
        ({"fraction": 0.001}, ValueError, r"fraction=0.001 of the 600 rows samples no row; raise fraction to at least"),
        ({"fraction": 0.5, "n_samples": 20}, ValueError, r"Pass fraction \(0.5\) or n_samples \(20\), not both"),
        ({"n_samples": 0}, ValueError, "'n_samples' parameter"),
        ({"n_samples": 2.5}, ValueError, "'n_samples' parameter"),
    ],
)
def test_bad_parameters(blobs, params, error, match):
    X, _ = blobs
    with pytest.raises(error, match=match):
        small_model(**params).fit(X)


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        (np.ones(10), ValueError, "Expected 2D array, got 1D array instead"),
        (np.ones((4, 3, 2)), ValueError, "Found array with dim 3"),
        (np.array([["a", "b"], ["c", "d"]]), ValueError, "Convert your data to numeric values"),
        (np.array([[1.0, np.nan]] * 10), ValueError, "Input X contains NaN"),
        (np.array([[1.0, np.inf]] * 10), ValueError, "Input X contains infinity"),
        (np.ones((1, 3)), ValueError, "1 sample"),
        (da.ones((10, 3, 2)), ValueError, r"Expected a 2D dask array \(n_pixels, n_channels\), got one with shape"),
        (da.from_array(np.array([["a"] * 3] * 10)), TypeError, "Expected a numeric dask array, got dtype <U1"),
        (da.from_array(np.array([[1.0, np.nan]] * 20)), ValueError, "contains NaN or infinity"),
    ],
)
def test_bad_input(X, error, match):
    with pytest.raises(error, match=match):
        PixelFlowSOM(n_clusters=2, xdim=2, ydim=2, fraction=1.0).fit(X)


def test_predict_checks_features(blobs):
    X, _ = blobs
    model = small_model().fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but PixelFlowSOM is expecting 5 features"):
        model.predict(X[:, :4])
    with pytest.raises(ValueError, match="X has 4 features, but PixelFlowSOM is expecting 5 features"):
        model.transform(da.from_array(X[:, :4]))


def test_som_estimator_trains_the_som(blobs):
    from flowsom.models import SOMEstimator

    X, _ = blobs
    template = SOMEstimator(xdim=2, ydim=2, rlen=3, seed=11)
    model = small_model(som=template, fraction=1.0).fit(X)
    assert template.xdim == 2  # cloned, not modified
    # flowsom's own SOM with the estimator's grid and schedule, on the same rows, gives the same codes.
    reference = SOMEstimator(xdim=5, ydim=5, rlen=10, mst=1, alpha=(0.05, 0.01), seed=11).fit(X)
    np.testing.assert_allclose(model.codes_, reference.codes, rtol=1e-12)
    nodes = nearest_reference(X, model.codes_)
    np.testing.assert_array_equal(model.transform(X), np.column_stack([nodes, model.node_metacluster_[nodes]]))
    assert not hasattr(model, "som_")  # only the codes are kept


def test_som_estimator_without_codes_of_the_grid(blobs):
    from sklearn.cluster import KMeans

    X, _ = blobs
    with pytest.raises(ValueError, match=r"must leave finite codes of shape \(xdim \* ydim, n_features\) = \(25, 5\)"):
        small_model(som=KMeans(n_clusters=25, n_init=1)).fit(X)


def test_auto_n_clusters(blobs):
    X, y = blobs
    model = small_model(n_clusters="auto", max_clusters=10).fit(X)
    assert model.n_clusters_ == 4  # four well separated blobs
    choice = model.n_clusters_choice_
    assert choice.n_clusters == 4
    assert choice.method == "knee"
    assert list(choice.criterion.index) == list(range(1, 11))
    np.testing.assert_array_equal(choice.labels, model.node_metacluster_)
    assert adjusted_rand_score(y, model.labels_) == 1.0
    fixed = small_model().fit(X)
    assert fixed.n_clusters_ == 4
    assert fixed.n_clusters_choice_ is None
    consensus = small_model(n_clusters="auto", metaclustering=ConsensusClustering(n_resamples=20)).fit(X)
    assert consensus.n_clusters_ == 4
    assert consensus.n_clusters_choice_.method == "knee"
    np.testing.assert_array_equal(consensus.n_clusters_choice_.labels, consensus.node_metacluster_)
    # R FlowSOM's elbow and ConsensusClusterPlus's delta area, by name
    elbow = small_model(n_clusters="auto", max_clusters=10, n_clusters_method="elbow").fit(X)
    assert elbow.n_clusters_choice_.method == "elbow"
    assert elbow.n_clusters_ == 4
    delta = small_model(
        n_clusters="auto", n_clusters_method="delta_area", metaclustering=ConsensusClustering(n_resamples=20)
    ).fit(X)
    assert delta.n_clusters_choice_.method == "delta_area"
    with pytest.raises(ValueError, match='n_clusters_method="delta_area" needs metaclustering=ConsensusClustering'):
        small_model(n_clusters="auto", n_clusters_method="delta_area").fit(X)


# --------------------------------------------------------------------------- check_input, channel_percentiles_


def _poisoned_image():
    import xarray as xr

    def explode(block):
        raise AssertionError("check_input read a pixel")

    data = da.zeros((3, 16, 16), chunks=(3, 8, 8), dtype=np.float32).map_blocks(explode, dtype=np.float32)
    return xr.DataArray(data, dims=("c", "y", "x"), coords={"c": ["CD3", "CD20", "PanKeratin"]}, name="tissue")


def test_check_input_reads_no_pixel_and_names_the_channels():
    image = _poisoned_image()
    assert PixelFlowSOM().check_input(image) == ["CD3", "CD20", "PanKeratin"]
    assert PixelFlowSOM(channels=["PanKeratin", "CD3"]).check_input(image) == ["PanKeratin", "CD3"]
    assert PixelFlowSOM(channels=np.array(["CD3"])).check_input() == ["CD3"]
    with pytest.raises(KeyError, match=r"\['Pankeratin'\] not found in image 'tissue' \(did you mean 'PanKeratin'\?\)"):
        PixelFlowSOM(channels=["Pankeratin"]).check_input(image)
    with pytest.raises(ValueError, match="'n_clusters' parameter"):
        PixelFlowSOM(n_clusters=-3).check_input(image)
    with pytest.raises(TypeError, match="check_input takes an image"):
        PixelFlowSOM().check_input(np.ones((4, 3)))


def test_channel_percentiles_are_those_of_the_training_pixels():
    from pixelflowsom._synthetic import make_synthetic_image

    image, _ = make_synthetic_image((64, 64), n_channels=4, n_phenotypes=3, seed=0)
    model = PixelFlowSOM(xdim=3, ydim=3, n_clusters=2, fraction=0.5, random_state=0)
    sample = model.training_sample(image)
    model.fit(sample)
    expected = np.percentile(np.asarray(sample.values, dtype=np.float64), [1, 50, 99], axis=0)
    np.testing.assert_array_equal(model.channel_percentiles_, expected)
