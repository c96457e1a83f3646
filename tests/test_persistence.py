"""A saved model is the model, not the data: sizes, reloading in a fresh process, versions, set_output."""

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import dask.array as da
import joblib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.pipeline import Pipeline

import pixelflowsom
import pixelflowsom._persistence as persistence
from pixelflowsom import InconsistentVersionWarning, PixelFlowSOM, PixelPreprocessor
from pixelflowsom._synthetic import make_synthetic_image

from .conftest import image_reference, nearest_reference


def synthetic(size, seed=0, n_channels=4):
    image, _ = make_synthetic_image((size, size), n_channels=n_channels, n_phenotypes=4, seed=seed)
    return image.astype(np.float32)


def model(**kwargs):
    params = {"n_clusters": 4, "xdim": 6, "ydim": 6, "som": "batch", "random_state": 0}
    return PixelFlowSOM(**(params | kwargs))


def saved_size(estimator, path):
    joblib.dump(estimator, path)
    return path.stat().st_size


@pytest.fixture(scope="module")
def images():
    return synthetic(2048), synthetic(512, seed=1)


def test_file_size_depends_on_the_sample_not_the_image(images, tmp_path):
    big, small = images
    # Fractions 1/16 apart: the same number of sampled pixels from images 16 times apart in size.
    on_big = model(fraction=1 / 256).fit(big.chunk({"y": 512}))
    on_small = model(fraction=1 / 16).fit(small)
    assert on_big.n_samples_fit_ == on_small.n_samples_fit_ == 16384
    size_big, size_small = saved_size(on_big, tmp_path / "big.joblib"), saved_size(on_small, tmp_path / "small.joblib")
    assert abs(size_big - size_small) < 4096
    # The bound of the docstring: 64 kB plus 8 bytes per sampled pixel for labels_ and per coordinate.
    assert size_big < 65536 + 8 * on_big.n_samples_fit_ * (1 + 2)
    assert big.nbytes > 100 * size_big


def test_pipeline_with_preprocessor_file_size(images, tmp_path):
    big, small = images
    sizes = []
    for image, fraction in ((big.chunk({"y": 512}), 1 / 256), (small, 1 / 16)):
        pipe = Pipeline([("prep", PixelPreprocessor(sigma=1.0)), ("som", model(fraction=fraction))]).fit(image)
        sizes.append(saved_size(pipe, tmp_path / "pipe.joblib"))
    assert abs(sizes[0] - sizes[1]) < 4096
    assert sizes[0] < 65536 + 8 * 16384 * 3


def test_model_fitted_on_a_zarr_store_does_not_carry_it(tmp_path):
    path = tmp_path / "training-store.zarr"
    synthetic(256).to_dataset(name="image").to_zarr(path)
    image = xr.open_zarr(path)["image"]
    assert isinstance(image.data, da.Array)
    fitted = model(fraction=0.1).fit(image)
    payload = pickle.dumps(fitted)
    assert str(path).encode() not in payload
    assert b"training-store" not in payload


RELOAD = textwrap.dedent(
    """
    import sys
    import warnings

    import dask.array as da
    import joblib
    import numpy as np
    import xarray as xr

    from pixelflowsom import InconsistentVersionWarning

    warnings.simplefilter("error", InconsistentVersionWarning)  # same version: no warning
    folder = sys.argv[1]
    model = joblib.load(f"{folder}/model.joblib")
    image = xr.open_dataarray(f"{folder}/image.nc").load()
    table = np.load(f"{folder}/table.npy")
    backed = xr.open_zarr(f"{folder}/image.zarr")["image"]
    out = {
        "numpy_image": model.transform(image).values,
        "dask_image": model.transform(image.chunk({"y": 50, "x": 70})).values,
        "zarr_image": model.transform(backed).values,
        "table": model.transform(table),
        "dask_table": model.transform(da.from_array(table, chunks=777)).compute(),
    }
    np.savez(f"{folder}/out.npz", **out)
    """
)


def test_saved_model_predicts_identically_in_a_fresh_process(tmp_path):
    image = synthetic(160)
    image.values[:, :3, :4] = np.nan
    channels = ["marker_02", "marker_00", "marker_03"]
    fitted = model(fraction=0.2, channels=channels).fit(image)
    joblib.dump(fitted, tmp_path / "model.joblib")
    image.to_netcdf(tmp_path / "image.nc")
    image.isel(c=[3, 1, 0, 2]).to_dataset(name="image").to_zarr(tmp_path / "image.zarr")  # channels reordered
    table = np.nan_to_num(image.sel(c=channels).values.reshape(3, -1).T)
    np.save(tmp_path / "table.npy", table)
    result = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    expected = image_reference(image, fitted.codes_, fitted.node_metacluster_, channels)
    for key in ("numpy_image", "dask_image", "zarr_image"):
        np.testing.assert_array_equal(out[key], expected, err_msg=key)
    nodes = nearest_reference(table, fitted.codes_)
    for key in ("table", "dask_table"):
        np.testing.assert_array_equal(out[key], np.column_stack([nodes, fitted.node_metacluster_[nodes]]), err_msg=key)


@pytest.mark.parametrize("estimator", [model(fraction=0.5), PixelPreprocessor(sigma=None)])
def test_other_version_warns(estimator, monkeypatch):
    fitted = estimator.fit(synthetic(64))
    payload = pickle.dumps(fitted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.loads(payload)  # same version: silent
    monkeypatch.setattr(persistence, "package_version", lambda: "99.0.0")
    with pytest.warns(InconsistentVersionWarning, match=rf"{type(estimator).__name__} from pixelflowsom version .* 99"):
        loaded = pickle.loads(payload)
    assert not hasattr(loaded, "_pixelflowsom_version")
    state = fitted.__getstate__()
    del state["_pixelflowsom_version"]
    with pytest.warns(InconsistentVersionWarning, match="from pixelflowsom version unknown"):
        type(estimator).__new__(type(estimator)).__setstate__(state)


def test_set_output_on_images_tables_and_dask_arrays():
    image = synthetic(96)
    fitted = model(fraction=0.5).set_output(transform="pandas").fit(image)
    expected = image_reference(image, fitted.codes_, fitted.node_metacluster_)
    labels = fitted.transform(image)
    assert isinstance(labels, xr.DataArray)  # images stay label images
    np.testing.assert_array_equal(labels.values, expected)
    np.testing.assert_array_equal(fitted.predict(image).values, expected[1])
    table = pd.DataFrame(image.values.reshape(4, -1).T, columns=list(image.c.values), index=np.arange(96 * 96) + 7)
    frame = fitted.transform(table)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["som_node", "metacluster"]
    pd.testing.assert_index_equal(frame.index, table.index)
    nodes = nearest_reference(table.to_numpy(), fitted.codes_)
    np.testing.assert_array_equal(frame.to_numpy(), np.column_stack([nodes, fitted.node_metacluster_[nodes]]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")  # a dask array has none
        lazy = fitted.transform(da.from_array(table.to_numpy(), chunks=1000))
    import dask.dataframe as dd

    assert isinstance(lazy, dd.DataFrame)  # lazy: nothing computed yet
    assert list(lazy.columns) == ["som_node", "metacluster"]
    np.testing.assert_array_equal(lazy.compute().to_numpy(), np.column_stack([nodes, fitted.node_metacluster_[nodes]]))
    pipe = Pipeline([("prep", PixelPreprocessor(sigma=None)), ("som", model(fraction=0.5))]).set_output(
        transform="pandas"
    )
    assert isinstance(pipe.fit(image).transform(image), xr.DataArray)
    with pytest.raises(ValueError, match="transform='excel' must be"):
        model().set_output(transform="excel")


def test_set_output_polars():
    pl = pytest.importorskip("polars")
    image = synthetic(64)
    fitted = model(fraction=0.5).set_output(transform="polars").fit(image)
    table = pd.DataFrame(image.values.reshape(4, -1).T, columns=list(image.c.values))
    frame = fitted.transform(table)
    assert isinstance(frame, pl.DataFrame)
    assert frame.columns == ["som_node", "metacluster"]
    assert isinstance(fitted.transform(image), xr.DataArray)


# ---------------------------------------------------------------------------------------------- skops files


class Marker:
    """A type no one trusts: building it writes a file (what a malicious model file would do, harmlessly)."""

    def __init__(self, path):
        self.path = str(path)

    def __setstate__(self, state):
        Path(state["path"]).touch()
        self.__dict__.update(state)


def skops_variants():
    from sklearn.cluster import KMeans

    from pixelflowsom import ConsensusClustering

    return {
        "auto": model(n_clusters="auto", max_clusters=8, som="online", fraction=0.3),
        "kmeans": model(metaclustering=KMeans(n_clusters=4, n_init=2, random_state=0), fraction=0.3),
        "consensus": model(
            n_clusters="auto", max_clusters=6, metaclustering=ConsensusClustering(n_resamples=5), fraction=0.3
        ),
        "pipeline": Pipeline([("prep", PixelPreprocessor(sigma=1.0)), ("som", model(fraction=0.3))]),
    }


@pytest.mark.parametrize("name", list(skops_variants()))
def test_skops_round_trip_labels_and_state(name, tmp_path):
    image = synthetic(96)
    fitted = skops_variants()[name].fit(image)
    path = persistence.save_model(fitted, tmp_path / "model.skops")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same version: silent; every type trusted
        loaded = pixelflowsom.load_model(path)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    som, original = (loaded[-1], fitted[-1]) if name == "pipeline" else (loaded, fitted)
    # The labels against the float64 nearest node of the loaded codes, on the preprocessed image for a pipeline.
    prepared = fitted[0].transform(image) if name == "pipeline" else image
    expected = image_reference(prepared, som.codes_, som.node_metacluster_)
    np.testing.assert_array_equal(loaded.transform(image).values, expected)
    np.testing.assert_array_equal(som.codes_, original.codes_)
    np.testing.assert_array_equal(som.node_metacluster_, original.node_metacluster_)
    np.testing.assert_array_equal(som.labels_, original.labels_)
    assert som.get_params(deep=False).keys() == original.get_params(deep=False).keys()
    if original.n_clusters == "auto":
        choice, before = som.n_clusters_choice_, original.n_clusters_choice_
        pd.testing.assert_frame_equal(choice.criterion, before.criterion)
        if before.stability is None:
            assert choice.stability is None
        else:
            pd.testing.assert_series_equal(choice.stability, before.stability)
        assert choice.cdf.keys() == before.cdf.keys()
        for k in before.cdf:
            np.testing.assert_array_equal(choice.cdf[k][1], before.cdf[k][1])
        assert (choice.n_clusters, choice.method) == (before.n_clusters, before.method)


def plain(value, path="model"):
    """Yield ``(path, type)`` of every value in a fitted state that is not an array, a plain value or an estimator."""
    from sklearn.base import BaseEstimator

    from pixelflowsom import NClustersChoice

    if isinstance(value, (np.ndarray, np.generic, int, float, str, bool, type(None))):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from plain(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from plain(key, f"{path} key")
            yield from plain(item, f"{path}[{key!r}]")
    elif isinstance(value, (BaseEstimator, NClustersChoice)):
        for key, item in value.__getstate__().items():
            yield from plain(item, f"{path}.{key}")
    else:
        yield path, type(value)


@pytest.mark.parametrize("name", list(skops_variants()))
def test_fitted_state_is_arrays_and_plain_values(name):
    estimator = skops_variants()[name]
    som = estimator[-1] if name == "pipeline" else estimator
    som.set_params(random_state=np.random.RandomState(0))  # even from a RandomState, the fitted state holds a seed
    estimator.fit(synthetic(64))
    state = {key: value for key, value in vars(som).items() if key.endswith("_")}
    assert list(plain(state)) == []
    with pytest.raises(AssertionError):  # the check sees what it must refuse
        assert list(plain({"rng": np.random.RandomState(0), "f": len})) == []


def test_trusted_types_are_the_package_classes():
    from pixelflowsom import ConsensusClustering, NClustersChoice

    classes = (PixelFlowSOM, PixelPreprocessor, ConsensusClustering, NClustersChoice)
    assert set(pixelflowsom.TRUSTED_TYPES) == {f"{c.__module__}.{c.__qualname__}" for c in classes}


def test_untrusted_type_is_refused_by_name_before_anything_is_built(tmp_path):
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    marker = tmp_path / "built"
    path = tmp_path / "evil.skops"
    sio.dump(Pipeline([("f", FunctionTransformer(os.system)), ("m", FunctionTransformer(Marker(marker)))]), path)
    refused = [f"{os.system.__module__}.system", f"{__name__}.Marker"]
    assert pixelflowsom.untrusted_types(path) == sorted(refused)
    with pytest.raises(TypeError) as error:
        pixelflowsom.load_model(path)
    for name in refused:
        assert repr(name) in str(error.value)
    assert "trusted=[...]" in str(error.value)
    assert not marker.exists()
    with pytest.raises(TypeError, match=r"posix.system|nt.system"):  # trusting one is not trusting the other
        pixelflowsom.load_model(path, trusted=[f"{__name__}.Marker"])
    assert not marker.exists()
    loaded = pixelflowsom.load_model(path, trusted=refused)  # what the user trusts, loads (and runs)
    assert marker.exists()
    assert loaded.steps[0][1].func is os.system
    with pytest.raises(TypeError, match="must be a sequence of type names"):
        pixelflowsom.load_model(path, trusted="posix.system")


def test_load_model_refuses_a_pickle_and_a_missing_file(tmp_path):
    joblib.dump(model(fraction=0.5).fit(synthetic(32)), tmp_path / "model.joblib")
    with pytest.raises(ValueError, match=r"is not a skops file \(it may be a pickle"):
        pixelflowsom.load_model(tmp_path / "model.joblib")
    with pytest.raises(FileNotFoundError, match="No model file"):
        pixelflowsom.load_model(tmp_path / "none.skops")
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        pixelflowsom.save_model(model(), tmp_path / "no" / "model.skops")


def test_skops_file_of_another_version_warns(tmp_path, monkeypatch):
    fitted = model(fraction=0.5).fit(synthetic(64))
    path = pixelflowsom.save_model(fitted, tmp_path / "model.skops")
    monkeypatch.setattr(persistence, "package_version", lambda: "99.0.0")
    with pytest.warns(InconsistentVersionWarning, match=r"PixelFlowSOM from pixelflowsom version .* 99\.0\.0"):
        pixelflowsom.load_model(path)


def test_save_model_replaces_a_file_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "model.skops"
    first = model(fraction=0.5).fit(synthetic(64))
    pixelflowsom.save_model(first, path)
    before = path.read_bytes()

    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(persistence.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pixelflowsom.save_model(model(fraction=0.5, random_state=1).fit(synthetic(64, seed=1)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.skops"]


def test_skops_file_is_small(images, tmp_path):
    big, _ = images
    fitted = model(fraction=1 / 256).fit(big.chunk({"y": 512}))
    size = pixelflowsom.save_model(fitted, tmp_path / "model.skops").stat().st_size
    assert size < saved_size(fitted, tmp_path / "model.joblib")  # compressed: smaller than the pickle
    assert big.nbytes > 100 * size


def test_saved_model_file_has_the_permissions_of_any_new_file(tmp_path):
    path = pixelflowsom.save_model(model(fraction=0.5).fit(synthetic(32)), tmp_path / "model.skops")
    (tmp_path / "plain").write_bytes(b"")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode  # shared models are readable as any file
