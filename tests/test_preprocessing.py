"""PixelPreprocessor against a plain-numpy reference of harpy's pixel_clustering_preprocess."""

import doctest
import importlib
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline

from pixelflowsom._preprocessing import PixelPreprocessor, _nonzero_percentiles

CHANNELS = ["CD3", "CD20", "DAPI"]


def make_values(shape, seed=0, dtype=np.float32):
    """Seeded (c, [z,] y, x) intensities with zeros, an all-zero corner and scattered NaNs in single channels."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 50.0, size=shape) * rng.uniform(0.5, 3.0, size=(shape[0],) + (1,) * (len(shape) - 1))
    x[rng.random(shape) < 0.3] = 0
    x[..., :6, :5] = 0
    nan = rng.random(shape[1:]) < 0.01
    x[0][nan] = np.nan
    return x.astype(dtype)


def to_image(values, chunks=None, name="img"):
    data = values if chunks is None else da.from_array(values, chunks=chunks)
    dims = ("c", "y", "x") if values.ndim == 3 else ("c", "z", "y", "x")
    coords = {"c": CHANNELS[: values.shape[0]], "y": np.arange(values.shape[-2]) * 0.5}
    return xr.DataArray(data, dims=dims, coords=coords, name=name, attrs={"transform": "identity"})


@pytest.fixture(scope="module")
def values2d():
    x = make_values((3, 64, 64))
    x.setflags(write=False)
    return x


@pytest.fixture(scope="module")
def values3d():
    x = make_values((3, 3, 32, 32), seed=1)
    x.setflags(write=False)
    return x


# ------------------------------------------------------------------------------------------ numpy reference


def ref_percentile(values, q):
    v = values[(values != 0) & ~np.isnan(values)].astype(np.float64)
    return np.percentile(v, q) if v.size else np.nan


def ref_stat(arrays, q, combine):
    """Per-channel percentile of the non-zero, non-NaN values, averaged over images or pooled."""
    n_channels = arrays[0].shape[0]
    if combine == "pooled":
        return np.array([ref_percentile(np.concatenate([a[c].ravel() for a in arrays]), q) for c in range(n_channels)])
    per_image = np.array([[ref_percentile(a[c], q) for c in range(n_channels)] for a in arrays])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_image, axis=0)


def reference(values_list, *, q=99.0, q_sum=5.0, q_post=99.9, sigma=2.0, norm_sum=True, cap_max=None, combine="mean"):
    """harpy's steps on whole in-memory arrays; returns the outputs and (quantiles, threshold, post_quantiles)."""
    xs = []
    for v in values_list:
        dtype = np.float64 if v.dtype == np.float64 else np.float32
        x = v.astype(dtype)
        xs.append(x[:, None] if x.ndim == 3 else x)
    n_channels = xs[0].shape[0]

    quantiles = None
    if q is not None:
        quantiles = np.nan_to_num(ref_stat(xs, q, combine), nan=1.0)
        xs = [x / quantiles.astype(x.dtype)[:, None, None, None] for x in xs]

    threshold = None
    if q_sum is not None:
        threshold = ref_stat([x.sum(axis=0)[None] for x in xs], q_sum, combine)[0]

    if sigma is not None:
        sigmas = np.broadcast_to(np.asarray(sigma, dtype=float), (n_channels,))
        blurred = []
        for x in xs:
            b = x.copy()
            for c in range(n_channels):
                for z in range(x.shape[1]):
                    if sigmas[c] > 0:
                        b[c, z] = ndimage.gaussian_filter(x[c, z], sigmas[c])
            blurred.append(b)
        xs = blurred

    out = []
    for x in xs:
        with np.errstate(invalid="ignore", divide="ignore"):
            s = x.sum(axis=0)
            x = np.where(np.isnan(s), np.nan, x).astype(x.dtype)
            if threshold is not None:
                x = np.where(s > x.dtype.type(threshold), x, np.nan).astype(x.dtype)
            if norm_sum:
                total = np.nansum(x, axis=0)
                x = np.where(total > 0, x / total, np.nan).astype(x.dtype)
        out.append(x)

    post = None
    if q_post is not None:
        post = np.nan_to_num(ref_stat(out, q_post, combine), nan=1.0)
        out = [x / post.astype(x.dtype)[:, None, None, None] for x in out]
    if cap_max is not None:
        out = [np.minimum(x, cap_max).astype(x.dtype) for x in out]
    out = [x[:, 0] if v.ndim == 3 else x for x, v in zip(out, values_list, strict=True)]
    return out, (quantiles, threshold, post)


def assert_matches_reference(pre, result, expected, stats):
    quantiles, threshold, post = stats
    for got, want in zip(result, expected, strict=True):
        values = got.values
        assert values.dtype == want.dtype
        np.testing.assert_array_equal(np.isnan(values), np.isnan(want))
        np.testing.assert_allclose(values, want, rtol=2e-6, atol=0, equal_nan=True)
    for fitted, want in [(pre.quantiles_, quantiles), (pre.post_quantiles_, post)]:
        if want is None:
            assert fitted is None
        else:
            np.testing.assert_allclose(fitted, want, rtol=1e-12)
    if threshold is None:
        assert pre.sum_threshold_ is None
    else:
        assert pre.sum_threshold_ == pytest.approx(threshold, rel=1e-12)


PARAMS = [
    {},
    {"sigma": None},
    {"sigma": [0.0, 1.0, 2.5], "cap_max": 1.0},
    {"q": None, "q_sum": None, "q_post": None, "sigma": None, "norm_sum": False},
    {"q": 90.0, "q_sum": None, "norm_sum": False, "q_post": 50.0, "sigma": 1.0},
    {"q_sum": 30.0, "combine": "pooled"},
]


# ----------------------------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunks", [(3, 1, 40, 40), (3, 1, 13, 17)])
def test_nonzero_percentiles_are_numpys(dtype, chunks):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 1, 40, 40)) * 100).astype(dtype)
    x[x > 50] = 0
    x[1, 0, :5] = np.nan
    x[2, 0, 0, :7] = 1.5  # ties
    x[2][np.abs(x[2]) < 60] = 1.5
    arr = da.from_array(x, chunks=chunks)
    for q in [0.0, 5.0, 33.3, 99.9, 100.0]:
        got = _nonzero_percentiles([arr], q, pooled=False)[0]
        want = [ref_percentile(x[c], q) for c in range(3)]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonzero_percentiles_bracket_in_different_bins(dtype):
    # 1.0 and 2.0 differ in their leading 16 key bits, 1.0 and its successor do not; -3.0 is negative.
    x = np.array([[1.0, 2.0, 0.0, 2.0, 1.0], [1.0, np.nextafter(dtype(1), dtype(2)), -3.0, 0.0, np.nan]], dtype=dtype)
    for q in [10.0, 25.0, 50.0, 62.5, 90.0]:
        got = _nonzero_percentiles([da.from_array(x[:, None, None, :], chunks=(2, 1, 1, 2))], q, pooled=False)[0]
        np.testing.assert_array_equal(got, [ref_percentile(x[0], q), ref_percentile(x[1], q)])


def test_nonzero_percentiles_pooled_and_empty():
    rng = np.random.default_rng(4)
    a = rng.uniform(1, 2, size=(2, 1, 9, 9)).astype(np.float32)
    b = rng.uniform(5, 9, size=(2, 1, 4, 13)).astype(np.float32)
    a[1] = 0
    b[1] = np.nan
    got = _nonzero_percentiles([da.from_array(a, chunks=(2, 1, 4, 4)), da.from_array(b)], 75.0, pooled=True)
    np.testing.assert_array_equal(got[0], [ref_percentile(np.concatenate([a[0].ravel(), b[0].ravel()]), 75.0), np.nan])
    per_image = _nonzero_percentiles([da.from_array(a), da.from_array(b)], 75.0, pooled=False)
    np.testing.assert_array_equal(
        per_image, [[ref_percentile(a[0], 75.0), np.nan], [ref_percentile(b[0], 75.0), np.nan]]
    )


# ------------------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("params", PARAMS)
def test_numpy_image_matches_reference(values2d, params):
    pre = PixelPreprocessor(**params)
    result = pre.fit(to_image(values2d)).transform(to_image(values2d))
    expected, stats = reference([values2d], **params)
    assert_matches_reference(pre, [result], expected, stats)


@pytest.mark.parametrize("chunks", [(3, 64, 64), (1, 16, 16), (2, 13, 23), (3, 7, 64)])
@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[2]])
def test_chunking_does_not_change_the_result(values2d, chunks, params):
    unchunked = PixelPreprocessor(**params).fit_transform(to_image(values2d)).values
    pre = PixelPreprocessor(**params)
    result = pre.fit_transform(to_image(values2d, chunks=chunks))
    assert isinstance(result.data, da.Array)
    np.testing.assert_array_equal(result.values, unchunked)  # bitwise, the blur at chunk borders included
    expected, stats = reference([values2d], **params)
    assert_matches_reference(pre, [result], expected, stats)


@pytest.mark.parametrize("chunks", [None, (3, 2, 3), (1, 4, 2)])
def test_image_smaller_than_the_kernel(chunks):
    values = make_values((3, 5, 7), seed=6)[..., ::-1, :].copy()  # the all-zero corner moved to the bottom
    pre = PixelPreprocessor(sigma=3.0)
    result = pre.fit_transform(to_image(values, chunks=chunks))
    expected, stats = reference([values], sigma=3.0)
    assert_matches_reference(pre, [result], expected, stats)


@pytest.mark.parametrize("chunks", [None, (3, 1, 32, 32), (2, 2, 9, 20)])
@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[4]])
def test_3d_image_blurs_each_plane(values3d, chunks, params):
    pre = PixelPreprocessor(**params)
    result = pre.fit_transform(to_image(values3d, chunks=chunks))
    assert result.dims == ("c", "z", "y", "x")
    expected, stats = reference([values3d], **params)
    assert_matches_reference(pre, [result], expected, stats)


@pytest.mark.parametrize("combine", ["mean", "pooled"])
def test_list_of_images_shares_statistics(values2d, values3d, combine):
    other = make_values((3, 40, 48), seed=2) * np.float32(4)
    values = [values2d, other, values3d]
    images = [
        to_image(values2d),
        to_image(other, chunks=(3, 16, 16), name="b"),
        to_image(values3d, chunks=(3, 1, 8, 32)),
    ]
    pre = PixelPreprocessor(combine=combine)
    result = pre.fit_transform(images)
    assert isinstance(result, list)
    assert [r.name for r in result] == ["img", "b", "img"]
    expected, stats = reference(values, combine=combine)
    assert_matches_reference(pre, result, expected, stats)
    single = PixelPreprocessor(combine=combine).fit(images[:1])
    assert not np.allclose(single.quantiles_, pre.quantiles_)


def test_mean_and_pooled_differ(values2d):
    images = [to_image(values2d), to_image(make_values((3, 20, 20), seed=5) * np.float32(10))]
    mean = PixelPreprocessor().fit(images).quantiles_
    pooled = PixelPreprocessor(combine="pooled").fit(images).quantiles_
    assert not np.allclose(mean, pooled)


def test_dtypes(values2d):
    as_uint = to_image(np.nan_to_num(values2d).astype(np.uint16))
    out = PixelPreprocessor().fit_transform(as_uint)
    assert out.dtype == np.float32
    expected, _ = reference([np.nan_to_num(values2d).astype(np.uint16)])
    np.testing.assert_allclose(out.values, expected[0], rtol=2e-6, equal_nan=True)
    as_f64 = values2d.astype(np.float64)
    out = PixelPreprocessor(sigma=1.0).fit_transform(to_image(as_f64))
    assert out.dtype == np.float64
    expected, _ = reference([as_f64], sigma=1.0)
    np.testing.assert_allclose(out.values, expected[0], rtol=1e-12, equal_nan=True)


def test_all_zero_channel_warns_and_is_left_unscaled(values2d):
    values = values2d.copy()
    values[1] = 0
    pre = PixelPreprocessor()
    with pytest.warns(UserWarning, match=r"\['CD20'\] have no non-zero, non-NaN pixel"):
        result = pre.fit_transform(to_image(values))
    assert pre.quantiles_[1] == 1.0
    assert pre.post_quantiles_[1] == 1.0
    expected, stats = reference([values])
    assert_matches_reference(pre, [result], expected, stats)
    assert np.nanmax(np.abs(result.values[1])) == 0


# -------------------------------------------------------------------------------- laziness and the output


def test_transform_is_lazy_and_keeps_metadata(values2d):
    blocks = []

    def load(block):
        blocks.append(block.shape)
        return block

    chunks = (3, 16, 32)
    arr = da.from_array(values2d, chunks=chunks).map_blocks(load, dtype=values2d.dtype)
    image = to_image(values2d).copy(data=arr)
    pre = PixelPreprocessor().fit(image)
    assert blocks
    assert set(blocks) <= {chunks, (0, 0, 0)}  # fit read chunk by chunk, never the whole image
    blocks.clear()

    result = pre.transform(image)
    assert blocks == []
    assert isinstance(result.data, da.Array)
    assert result.chunks == ((3,), (16,) * 4, (32,) * 2)
    assert result.dims == image.dims
    assert result.name == image.name
    assert result.attrs == image.attrs
    xr.testing.assert_identical(result.coords.to_dataset(), image.coords.to_dataset())

    values = result.values
    assert blocks
    expected, _ = reference([values2d])
    np.testing.assert_allclose(values, expected[0], rtol=2e-6, equal_nan=True)


def test_transform_of_numpy_image_is_dask_backed(values2d):
    pre = PixelPreprocessor().fit(to_image(values2d))
    with dask.config.set(scheduler="sync"):
        result = pre.transform(to_image(values2d))
    assert isinstance(result.data, da.Array)
    assert result.data.dtype == np.float32


def test_docstring_example():
    result = doctest.testmod(
        importlib.import_module("pixelflowsom._preprocessing"), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------------------------------- errors


def _image(dims, shape=None, channels=CHANNELS, dtype=np.float32):
    shape = shape or (3,) * len(dims)
    coords = {"c": channels} if "c" in dims else {}
    values = np.random.default_rng(0).uniform(1, 2, size=shape).astype(dtype)
    return xr.DataArray(values, dims=dims, coords=coords)


GOOD = _image(("c", "y", "x"))

PARAM_ERRORS = [
    ({"q": 101}, r"'q' parameter of PixelPreprocessor must be .* or None"),
    ({"q_post": -1}, r"'q_post' parameter"),
    ({"sigma": -1.0}, r"'sigma' parameter"),
    ({"sigma": [1.0, 2.0]}, r"sigma=\[1.0, 2.0\] must be one non-negative number or one per channel \(3 channels\)"),
    ({"sigma": [1.0, -2.0, 0.0]}, r"must be one non-negative number or one per channel"),
    ({"cap_max": 0}, r"'cap_max' parameter"),
    ({"norm_sum": "yes"}, r"'norm_sum' parameter"),
    ({"combine": "median"}, r"'combine' parameter .* \{'mean', 'pooled'\}|'combine' parameter"),
]


@pytest.mark.parametrize(("params", "match"), PARAM_ERRORS)
def test_parameter_errors(params, match):
    with pytest.raises(ValueError, match=match):
        PixelPreprocessor(**params).fit(GOOD)


INPUT_ERRORS = [
    (np.ones((3, 4, 4)), TypeError, r"expects an xarray.DataArray .* the image is a numpy.ndarray"),
    ([GOOD, np.ones((3, 4, 4))], TypeError, r"image 1 is a numpy.ndarray"),
    ([], ValueError, r"empty list of images"),
    (_image(("y", "x")), ValueError, r"no channel dim 'c'; add one with image.expand_dims"),
    (_image(("c", "t", "y", "x")), ValueError, r"dims \['t'\] are not allowed"),
    (_image(("y", "x", "c")), ValueError, r"reorder them with image.transpose\('c', 'y', 'x'\)"),
    (_image(("c", "y")), ValueError, r"has dims \('c', 'y'\); expected"),
    (_image(("c", "y", "x"), dtype=complex), TypeError, r"has dtype complex128; expected numbers"),
    (_image(("c", "y", "x"), channels=["a", "a", "b"]), ValueError, r"duplicate channel names \['a', 'a', 'b'\]"),
]


@pytest.mark.parametrize(("X", "error", "match"), INPUT_ERRORS)
def test_input_errors(X, error, match):
    with pytest.raises(error, match=match):
        PixelPreprocessor().fit(X)
    pre = PixelPreprocessor(sigma=None).fit(GOOD)
    with pytest.raises(error, match=match.replace("the first image", "PixelPreprocessor.fit")):
        pre.transform(X)


def test_missing_channel_in_fit_suggests_the_close_name():
    other = _image(("c", "y", "x"), channels=["CD3", "CD20", "Dapi1"])
    with pytest.raises(
        KeyError, match=r"Channel\(s\) \['DAPI'\] not found in image at position 1 \(did you mean 'Dapi1'"
    ):
        PixelPreprocessor().fit([GOOD, other])


def test_transform_names_the_fitted_channels():
    pre = PixelPreprocessor(sigma=None).fit(GOOD)
    image = _image(("c", "y", "x"), shape=(2, 3, 3), channels=["CD3", "CD20"])
    with pytest.raises(KeyError, match=r"\['DAPI'\] not found .* PixelPreprocessor was fitted on channels \['CD3', "):
        pre.transform(image)


def test_channels_selects_by_label_in_fit_and_transform(values2d):
    """channels= equals preprocessing image.sel(c=channels); transform finds them among extra, reordered channels."""
    image = to_image(values2d, chunks=(3, 32, 32))  # CD3, CD20, DAPI
    wanted = ["DAPI", "CD3"]
    pre = PixelPreprocessor(channels=wanted, sigma=1.0).fit(image)
    expected, _ = reference([values2d[[2, 0]]], sigma=1.0)
    assert pre.check_input() == wanted
    assert pre.channel_names_.tolist() == wanted
    out = pre.transform(image)
    assert out.coords["c"].values.tolist() == wanted
    np.testing.assert_allclose(out.values, expected[0], rtol=1e-6, equal_nan=True)
    shuffled = image.isel(c=[1, 2, 0])  # CD20, DAPI, CD3: extra channel and another order
    np.testing.assert_array_equal(pre.transform(shuffled).values, out.values)
    unfitted = PixelPreprocessor(channels=["DAPI", "Cd 3"])
    with pytest.raises(KeyError, match=r"did you mean 'CD3'\?"):
        unfitted.check_input(image)


def test_check_input_reads_no_pixel(values2d):
    image = to_image(values2d, chunks=(3, 32, 32))
    poisoned = image.copy(data=image.data.map_blocks(_explode, dtype=image.dtype))
    assert PixelPreprocessor().check_input(poisoned) == CHANNELS
    with pytest.raises(ValueError, match="'q' parameter"):
        PixelPreprocessor(q=200).check_input(poisoned)


def _explode(block):
    raise AssertionError("check_input read a pixel")


def test_transform_before_fit():
    with pytest.raises(NotFittedError):
        PixelPreprocessor().transform(GOOD)


# --------------------------------------------------------------------------------------- scikit-learn API


def test_clone_and_params():
    pre = PixelPreprocessor(q=95.0, sigma=[1.0, 0.0, 2.0], combine="pooled").fit(GOOD)
    copy = clone(pre)
    assert copy.get_params() == pre.get_params()
    assert not hasattr(copy, "quantiles_")
    assert copy.sigma is not pre.sigma or isinstance(pre.sigma, float)
    assert PixelPreprocessor().__sklearn_tags__().input_tags.allow_nan


class ChannelMeans(BaseEstimator):
    """Tiny estimator of DataArray images: the NaN-ignoring mean of every channel."""

    def fit(self, X, y=None):
        images = X if isinstance(X, list) else [X]
        pixels = np.concatenate([im.values.reshape(im.sizes["c"], -1) for im in images], axis=1)
        self.means_ = np.nanmean(pixels, axis=1)
        self.channels_ = list(images[0].coords["c"].values)
        return self

    def predict(self, X):
        return X.mean(dim="c").values


def test_pipeline(values2d):
    image = to_image(values2d, chunks=(3, 32, 32))
    pipe = Pipeline([("pre", PixelPreprocessor(sigma=1.0)), ("means", ChannelMeans())])
    pipe.fit(image)
    expected, _ = reference([values2d], sigma=1.0)
    np.testing.assert_allclose(pipe.named_steps["means"].means_, np.nanmean(expected[0].reshape(3, -1), axis=1))
    assert pipe.named_steps["means"].channels_ == CHANNELS
    assert pipe.predict(image).shape == (64, 64)
    assert pipe.n_features_in_ == 3

    other = clone(pipe).set_params(pre__sigma=None, pre__q_sum=None)
    other.fit([image, image])
    assert other.named_steps["pre"].sum_threshold_ is None
    expected, _ = reference([values2d, values2d], sigma=None, q_sum=None)
    np.testing.assert_allclose(
        other.named_steps["means"].means_, np.nanmean(expected[0].reshape(3, -1), axis=1), rtol=1e-6
    )
