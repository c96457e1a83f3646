"""PixelFlowSOM on xarray images: sampling, lazy label images, 3D, lists, schedulers, errors."""

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import Pipeline

from pixelflowsom import PixelFlowSOM, PixelSample, sample_pixels
from pixelflowsom._sampling import sample_image
from pixelflowsom._synthetic import make_synthetic_image

from .conftest import image_reference, nearest_reference


@pytest.fixture(scope="module")
def image2d():
    image, truth = make_synthetic_image((120, 150), n_channels=6, n_phenotypes=4, seed=0)
    image = image.copy()
    image.values[:, :4, :6] = np.nan  # a NaN corner: background, label 0
    image.values[2, 50, 60] = np.nan  # one NaN channel is enough
    return image, truth


def model(**kwargs):
    params = {"n_clusters": 4, "xdim": 5, "ydim": 5, "fraction": 0.25, "random_state": 0}
    return PixelFlowSOM(**{**params, **kwargs})


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_fit_predict_transform_image(image2d):
    image, truth = image2d
    m = model().fit(image)
    np.testing.assert_array_equal(m.feature_names_in_, [f"marker_{i:02d}" for i in range(6)])
    assert m.n_features_in_ == 6
    assert m.channels_ == list(image.c.values)
    expected = image_reference(image, m.codes_, m.node_metacluster_)
    labels = m.predict(image)
    assert isinstance(labels, xr.DataArray)
    assert isinstance(labels.data, da.Array)
    assert labels.dims == ("y", "x")
    assert labels.dtype == np.uint8
    values = labels.values
    assert values.dtype == np.uint8  # declared dtype == computed dtype
    np.testing.assert_array_equal(values, expected[1])
    nan = np.isnan(image.values).any(axis=0)
    assert (values[nan] == 0).all()
    assert set(np.unique(values[~nan])) == {1, 2, 3, 4}
    assert adjusted_rand_score(truth[~nan], values[~nan]) > 0.95
    stack = m.transform(image)
    assert stack.dims == ("label", "y", "x")
    assert list(stack.coords["label"].values) == ["som_node", "metacluster"]
    np.testing.assert_array_equal(stack.values, expected)
    # labels_: the 0-based metaclusters of the sampled pixels, in the order of sample_coords_.
    (coords,) = m.sample_coords_
    np.testing.assert_array_equal(m.labels_, expected[1][coords[:, 0], coords[:, 1]] - 1)
    # fit_predict returns the lazy label image.
    fitted = model().fit_predict(image)
    assert isinstance(fitted.data, da.Array)
    np.testing.assert_array_equal(fitted.values, expected[1])


def test_sample_size_and_nan_dropping(image2d):
    image, _ = image2d
    m = model().fit(image)
    n_pixels = 120 * 150
    coords = m.sample_coords_[0]
    values = image.values[:, coords[:, 0], coords[:, 1]]
    assert np.isfinite(values).all()
    n_nan_sampled = int(0.25 * n_pixels) - len(coords)
    assert 0 < n_nan_sampled <= 25  # exactly int(fraction * n) drawn, then the NaN ones dropped
    assert m.n_samples_fit_ == len(coords)
    assert len(np.unique(coords[:, 0] * 150 + coords[:, 1])) == len(coords)


@pytest.mark.parametrize(
    "chunks", [{"c": 1, "y": 17, "x": 33}, {"c": 6, "y": 120, "x": 150}, {"c": 2, "y": 64, "x": 8}]
)
def test_chunking_does_not_change_sample_model_or_labels(image2d, chunks):
    image, _ = image2d
    reference = model().fit(image)
    chunked = image.chunk(chunks)
    m = model().fit(chunked)
    np.testing.assert_array_equal(m.sample_coords_[0], reference.sample_coords_[0])
    np.testing.assert_array_equal(m.codes_, reference.codes_)
    np.testing.assert_array_equal(m.predict(chunked).values, image_reference(image, m.codes_, m.node_metacluster_)[1])


def test_sampling_reads_each_chunk_once_and_only_chunks_with_samples():
    data = np.arange(2 * 100 * 100, dtype=np.float32).reshape(2, 100, 100)
    seen = []

    def record(block, block_info=None):
        seen.append(tuple(block_info[0]["chunk-location"]))
        return block

    lazy = da.from_array(data, chunks=(1, 10, 10)).map_blocks(record, dtype=data.dtype)
    with dask.config.set(scheduler="synchronous"):
        values, coords = sample_image(lazy, 0.001, 3)
    assert len(coords) == 10
    np.testing.assert_array_equal(values, data[:, coords[:, 0], coords[:, 1]].T)
    touched = {(c, y // 10, x // 10) for y, x in coords for c in range(2)}
    assert sorted(seen) == sorted(touched)  # every touched chunk once, no other chunk


def test_output_chunks_parameter(image2d):
    image, _ = image2d
    m = model(chunks=(40, 50)).fit(image.chunk({"y": 30}))
    out = m.transform(image)
    assert out.data.chunks == ((2,), (40, 40, 40), (50, 50, 50))
    assert model(chunks=64).fit(image).predict(image).data.chunks == ((64, 56), (64, 64, 22))
    np.testing.assert_array_equal(out.values, image_reference(image, m.codes_, m.node_metacluster_))


@pytest.mark.parametrize("strip", [1 << 19, 97])  # one strip per block, or many (and a ragged last one)
def test_dask_image_labelled_as_stored_then_rechunked(image2d, monkeypatch, strip):
    from pixelflowsom import _inference

    monkeypatch.setattr(_inference, "_STRIP_PIXELS", strip)
    image, _ = image2d
    stored = image.chunk({"c": 2, "y": 30, "x": 70})  # channels in several chunks, blocks unlike the labels'
    channels = ["marker_05", "marker_00", "marker_03"]
    m = model(chunks=(40, 50), channels=channels).fit(stored)
    out = m.transform(stored)
    assert out.data.chunks == ((2,), (40, 40, 40), (50, 50, 50))
    np.testing.assert_array_equal(out.values, image_reference(image, m.codes_, m.node_metacluster_, channels))
    meta = m.predict(stored)
    assert meta.data.chunks == ((40, 40, 40), (50, 50, 50))
    np.testing.assert_array_equal(meta.values, image_reference(image, m.codes_, m.node_metacluster_, channels)[1])


def test_single_map_blocks_layer_and_one_payload_key(image2d):
    image, _ = image2d
    out = model().fit(image).predict(image.chunk({"y": 40}))
    graph = out.data.__dask_graph__()
    label_layers = [name for name in graph.layers if name.startswith("pixelflowsom-metaclusters")]
    assert len(label_layers) == 1
    payload_keys = [k for k in graph if str(k).startswith("SOMModel")]
    assert len(payload_keys) == 1


def test_fit_builds_no_label_graph_and_holds_no_image(image2d):
    image, _ = image2d
    m = model().fit(image.chunk({"y": 40}))
    for name, value in vars(m).items():
        for item in value if isinstance(value, list) else [value]:
            assert not isinstance(item, xr.DataArray | xr.DataTree | da.Array), name


@pytest.mark.parametrize(
    "channels", [["marker_03", "marker_01"], ["marker_05", "marker_00", "marker_02"], "marker_02", ["marker_04"]]
)
def test_channel_subsets_and_orders_equal_reference(image2d, channels):
    image, truth = image2d
    m = model(channels=channels).fit(image)
    wanted = [channels] if isinstance(channels, str) else channels
    np.testing.assert_array_equal(m.feature_names_in_, wanted)
    assert m.codes_.shape == (25, len(wanted))
    expected = image_reference(image, m.codes_, m.node_metacluster_, channels=wanted)
    np.testing.assert_array_equal(m.transform(image).values, expected)
    # Later images are matched by channel label, whatever their channel order.
    shuffled = image.isel(c=[5, 2, 4, 0, 3, 1]).chunk({"y": 50})
    np.testing.assert_array_equal(m.transform(shuffled).values, expected)
    np.testing.assert_array_equal(m.predict([image, shuffled])[1].values, expected[1])


def test_int_channel_labels_select_by_label_not_position(image2d):
    image, _ = image2d
    int_image = image.assign_coords(c=[10, 11, 12, 13, 14, 15])
    by_int = model(channels=[13, 11]).fit(int_image)
    np.testing.assert_array_equal(by_int.feature_names_in_, ["13", "11"])
    by_name = model(channels=["marker_03", "marker_01"]).fit(image)
    np.testing.assert_array_equal(by_int.codes_, by_name.codes_)
    expected = image_reference(int_image, by_int.codes_, by_int.node_metacluster_, channels=[13, 11])
    np.testing.assert_array_equal(by_int.transform(int_image).values, expected)
    np.testing.assert_array_equal(by_int.transform(int_image.isel(c=[3, 1, 0, 2, 4, 5])).values, expected)


def test_images_with_channels_in_different_orders(image2d):
    image, _ = image2d
    other, _ = make_synthetic_image((60, 80), n_channels=6, n_phenotypes=4, seed=1)
    other = other.isel(c=[3, 0, 5, 1, 4, 2])  # the same channels, stored in another order
    channels = ["marker_02", "marker_05", "marker_00"]
    m = model(channels=channels).fit([image, other])
    for im, out in zip([image, other], m.transform([image, other]), strict=True):
        np.testing.assert_array_equal(out.values, image_reference(im, m.codes_, m.node_metacluster_, channels))
    # The sampled values of the second image are its own pixels in the selected channels.
    sample = sample_pixels([image, other], 0.25, channels=channels, random_state=0)
    rows = sample.image_index == 1
    y, x = sample.coords[rows].T
    np.testing.assert_array_equal(sample.values[rows], other.sel(c=channels).values[:, y, x].T)


def test_pixel_sample_fit_equals_image_fit(image2d):
    image, _ = image2d
    other, _ = make_synthetic_image((60, 80), n_channels=6, n_phenotypes=4, seed=1)
    channels = ["marker_04", "marker_01", "marker_02"]
    direct = model(channels=channels).fit([image, other])
    sample = sample_pixels([image, other], 0.25, channels=channels, random_state=0)
    assert isinstance(sample, PixelSample)
    assert sample.channels == channels
    via_sample = model(channels=channels).fit(sample)
    np.testing.assert_array_equal(via_sample.codes_, direct.codes_)
    np.testing.assert_array_equal(via_sample.node_metacluster_, direct.node_metacluster_)
    for a, b in zip(via_sample.sample_coords_, direct.sample_coords_, strict=True):
        np.testing.assert_array_equal(a, b)
    # labels_ are the sample's metaclusters; predict/transform on the sample label its rows (0-based).
    nodes = nearest_reference(sample.values, direct.codes_)
    np.testing.assert_array_equal(direct.labels_, direct.node_metacluster_[nodes])
    np.testing.assert_array_equal(direct.transform(sample), np.column_stack([nodes, direct.node_metacluster_[nodes]]))
    with pytest.raises(ValueError, match="The PixelSample holds channels"):
        model(channels=["marker_00"]).fit(sample)
    with pytest.raises(ValueError, match="The PixelSample holds channels"):
        model().fit(image).predict(sample)


def test_list_of_images_one_model_different_samples(image2d):
    image, _ = image2d
    other, _ = make_synthetic_image((60, 80), n_channels=6, n_phenotypes=4, seed=1)
    m = model().fit([image, image, other])
    a, b, c = m.sample_coords_
    assert not np.array_equal(a, b)  # same-shaped images get their own samples
    assert len(c) == int(0.25 * 60 * 80)
    out = m.predict([image, other])
    assert isinstance(out, list)
    assert [o.shape for o in out] == [(120, 150), (60, 80)]
    for im, labels in zip([image, other], out, strict=True):
        np.testing.assert_array_equal(labels.values, image_reference(im, m.codes_, m.node_metacluster_)[1])
    assert m.n_samples_fit_ == len(a) + len(b) + len(c)


def test_n_samples_fixes_the_training_pixels(image2d):
    image, _ = image2d
    other, _ = make_synthetic_image((60, 80), n_channels=6, n_phenotypes=4, seed=1)
    m = model(fraction=None, n_samples=1_000).fit([image, other])
    a, b = m.sample_coords_
    # 1000 split as 120 * 150 : 60 * 80, shares 789.47 and 210.53: 789 and 211, less the pixels with a NaN channel
    assert len(b) == 211
    nan = np.isnan(image.values).any(axis=0)
    assert 789 - nan.sum() <= len(a) <= 789
    assert not nan[tuple(a.T)].any()
    sample = sample_pixels([image, other], n_samples=1_000, random_state=0)
    np.testing.assert_array_equal(model(fraction=None, n_samples=1_000).fit(sample).codes_, m.codes_)
    for im in (image, other):
        np.testing.assert_array_equal(m.transform(im).values, image_reference(im, m.codes_, m.node_metacluster_))


def test_3d_image():
    image, truth = make_synthetic_image((6, 40, 50), n_channels=4, n_phenotypes=3, seed=2)
    image = image.copy()
    image.values[1, 2, 3, 4] = np.nan
    m = model(n_clusters=3, channels=["marker_03", "marker_00", "marker_01"]).fit(image.chunk({"z": 2, "y": 25}))
    assert m.sample_coords_[0].shape[1] == 3
    expected = image_reference(image, m.codes_, m.node_metacluster_, channels=m.channels_)
    labels = m.predict(image.chunk({"z": 4, "y": 13, "x": 50}))
    assert labels.dims == ("z", "y", "x")
    np.testing.assert_array_equal(labels.values, expected[1])
    np.testing.assert_array_equal(m.transform(image).values, expected)
    assert adjusted_rand_score(truth.ravel(), labels.values.ravel()) > 0.95


def test_integer_image_and_datatree(image2d):
    image, _ = image2d
    ints = (image.fillna(0) * 1000).astype(np.uint16)
    m = model().fit(ints)
    expected = image_reference(ints, m.codes_, m.node_metacluster_)
    np.testing.assert_array_equal(m.transform(ints.chunk({"y": 50})).values, expected)
    tree = xr.DataTree.from_dict(
        {"scale0": ints.to_dataset(name="image"), "scale1": ints[:, ::2, ::2].to_dataset(name="image")}
    )
    np.testing.assert_array_equal(model().fit(tree).codes_, m.codes_)
    np.testing.assert_array_equal(m.transform(tree).values, expected)


def test_larger_than_255_nodes_uses_uint16(image2d):
    image, _ = image2d
    m = model(xdim=16, ydim=16, fraction=1.0).fit(image)
    assert m.transform(image).dtype == np.uint16
    assert m.predict(image).dtype == np.uint8
    stack = m.transform(image).values
    assert stack.dtype == np.uint16
    np.testing.assert_array_equal(stack, image_reference(image, m.codes_, m.node_metacluster_))
    assert stack[0].max() > 255


def test_distributed_processes(image2d):
    distributed = pytest.importorskip("distributed")
    image, _ = image2d
    chunked = image.chunk({"y": 40, "x": 50})
    expected = model(channels=["marker_05", "marker_01"]).fit(image)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster),
    ):
        m = model(channels=["marker_05", "marker_01"]).fit(chunked)
        labels = m.transform(chunked).compute()
    np.testing.assert_array_equal(m.codes_, expected.codes_)
    np.testing.assert_array_equal(labels.values, image_reference(image, m.codes_, m.node_metacluster_, m.channels_))


def test_pipeline_with_images(image2d):
    image, _ = image2d
    pipe = Pipeline([("som", model(channels=["marker_02", "marker_03"]))]).fit(image)
    som = pipe.named_steps["som"]
    expected = image_reference(image, som.codes_, som.node_metacluster_, som.channels_)
    np.testing.assert_array_equal(pipe.predict(image).values, expected[1])


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda im: im.rename(c="channel"), ValueError, r"unknown dims \['channel'\]"),
        (lambda im: im.isel(c=0), ValueError, "dims \\('y', 'x'\\).*a 'c' \\(channel\\) dim is missing"),
        (lambda im: im.expand_dims(t=1), ValueError, r"unknown dims \['t'\]"),
        (lambda im: im.rename(y="z"), ValueError, "a 2D one 'y' and 'x'"),
        (lambda im: im.astype(str), TypeError, "dtype <U.*expected a numeric image"),
        (lambda im: [im, im.expand_dims(z=2, axis=1)], ValueError, "All images must have the same dims"),
        (lambda im: [im, im.drop_sel(c="marker_01")], KeyError, r"\['marker_01'\] not found in image at position 1"),
        (
            lambda im: im.rename("tissue").drop_sel(c="marker_01"),
            KeyError,
            r"not found in image 'tissue' \(did you mean 'marker_0.'\?\); available",
        ),
        (lambda im: im.rename("allnan") * np.nan, ValueError, "All 4500 sampled pixels of image 'allnan' have a NaN"),
        (lambda im: im[:, :1, :3], ValueError, "fraction=0.25 of the 3 pixels samples no pixel"),
    ],
)
def test_bad_images(image2d, make, error, match):
    image, _ = image2d
    with pytest.raises(error, match=match):
        model(channels=["marker_00", "marker_01"]).fit(make(image))


def test_later_image_with_other_channels(image2d):
    image, _ = image2d
    m = model(channels=["marker_00", "marker_01"]).fit(image)
    with pytest.raises(KeyError, match=r"Channel\(s\) \['marker_01'\] not found in image 'new'"):
        m.predict(image.drop_sel(c="marker_01").rename("new"))
    table_model = model().fit(image.values.reshape(6, -1).T[~np.isnan(image.values).any(0).ravel()])
    with pytest.raises(ValueError, match="has 5 channels, but PixelFlowSOM was fitted on 6 features"):
        table_model.predict(image.isel(c=slice(0, 5)))
    # Fitted on a table without feature names: an image's channels are taken by position.
    expected = image_reference(image, table_model.codes_, table_model.node_metacluster_)
    np.testing.assert_array_equal(table_model.predict(image).values, expected[1])


def test_bad_channels_parameter(image2d):
    image, _ = image2d
    with pytest.raises(ValueError, match="must name at least one channel, each once"):
        model(channels=["marker_00", "marker_00"]).fit(image)
    with pytest.raises(ValueError, match="must name at least one channel"):
        model(channels=[]).fit(image)


def test_preprocessing_pipeline_end_to_end(image2d):
    from pixelflowsom import PixelPreprocessor

    image, truth = image2d
    pipe = Pipeline([("prep", PixelPreprocessor(sigma=1.0)), ("som", model())])
    chunked = image.chunk({"y": 40, "x": 50})
    pipe.fit(chunked)
    labels = pipe.predict(chunked)
    assert isinstance(labels.data, da.Array)  # still lazy after preprocessing
    values = labels.values
    valid = values > 0
    assert valid.mean() > 0.8  # the preprocessing's NaN pixels (sum threshold) are background
    assert adjusted_rand_score(truth[valid], values[valid]) > 0.5  # blur + sum normalisation: 0.72 measured
    som = pipe.named_steps["som"]
    preprocessed = pipe.named_steps["prep"].transform(image)
    np.testing.assert_array_equal(values, image_reference(preprocessed, som.codes_, som.node_metacluster_)[1])
    np.testing.assert_array_equal(pipe.predict(image).values, values)  # chunking does not matter


def test_auto_n_clusters_does_not_depend_on_chunking_or_scheduler(image2d):
    distributed = pytest.importorskip("distributed")
    image, truth = image2d
    reference = model(n_clusters="auto").fit(image)
    assert reference.n_clusters_ == 4  # the four phenotypes of the image
    for chunks in ({"y": 17, "x": 33}, {"c": 1, "y": 64}):
        other = model(n_clusters="auto").fit(image.chunk(chunks))
        assert other.n_clusters_ == reference.n_clusters_
        pd.testing.assert_frame_equal(other.n_clusters_choice_.criterion, reference.n_clusters_choice_.criterion)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster),
    ):
        remote = model(n_clusters="auto").fit(image.chunk({"y": 40}))
    assert remote.n_clusters_ == reference.n_clusters_
    np.testing.assert_array_equal(remote.node_metacluster_, reference.node_metacluster_)
    labels = reference.predict(image).values
    assert labels.max() == 4
    np.testing.assert_array_equal(labels, image_reference(image, reference.codes_, reference.node_metacluster_)[1])
