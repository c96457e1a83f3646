"""Per-channel preprocessing of multiplexed images before pixel clustering.

:class:`PixelPreprocessor` is ``harpy.im.pixel_clustering_preprocess`` (``saeyslab/harpy``,
``src/harpy/image/pixel_clustering/_preprocess.py``) as a scikit-learn transformer: ``fit`` computes the per-channel
statistics, ``transform`` applies them lazily with dask.

The module has three layers. The block functions (``_*_block``) run on one numpy block of a ``(c, z, y, x)`` array
whose channel axis is a single chunk; the lazy stage builders (``_normalized``, ``_blurred``, ``_finished``,
``_channel_sum``) wire them into dask graphs; :func:`_nonzero_percentiles` computes exact percentiles of dask arrays
chunk by chunk. All of them assume validated input. The estimator validates and orchestrates.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _images
from ._compat import Interval, StrOptions, _fit_context, set_output_config, validate_params
from ._persistence import VersionedPickleMixin

_DIMS_2D = ("c", "y", "x")
_DIMS_3D = ("c", "z", "y", "x")
_TRUNCATE = 4.0  # Gaussian kernel radius in standard deviations; scipy's and dask-image's default, which harpy uses
_DIGIT_BITS = 16  # radix of the exact percentile selection: 2 passes over float32 data, 4 over float64
_N_BINS = 1 << _DIGIT_BITS


# ---------------------------------------------------------------------------------------------------------- blocks


def _scale_block(block, *, divisor, cast_to):
    """Cast a ``(c, z, y, x)`` block to ``cast_to`` and divide each channel by its ``divisor`` (None: cast only)."""
    out = block.astype(cast_to, copy=False)
    if divisor is not None:
        out = out / divisor[:, None, None, None]
    return out


def _blur_block(block, *, sigmas):
    """Gaussian blur of every ``(y, x)`` plane of a ``(c, z, y, x)`` block, with the standard deviation of its channel.

    A channel with sigma 0 is copied. scipy's defaults (``mode="reflect"``, ``truncate=4``) are dask-image's; run
    through :func:`dask.array.map_overlap` with a depth of the kernel radius, blocks reproduce the whole-image filter.
    """
    out = np.empty_like(block)
    for c, sigma in enumerate(sigmas):
        if sigma > 0:
            ndimage.gaussian_filter(
                block[c], sigma=(0.0, sigma, sigma), mode="reflect", truncate=_TRUNCATE, output=out[c]
            )
        else:
            out[c] = block[c]
    return out


def _channel_sum_block(block):
    """Sum over the channels of a ``(c, z, y, x)`` block, kept as a ``(1, z, y, x)`` block; NaN propagates."""
    return block.sum(axis=0, keepdims=True)


def _finish_block(block, *, threshold, norm_sum, divisor, cap_max):
    """Pixel-sum steps of a ``(c, z, y, x)`` block, in harpy's order.

    1. A pixel whose channel sum is NaN becomes NaN in every channel;
    2. a pixel whose channel sum is not above ``threshold`` becomes NaN (skipped if ``threshold`` is None);
    3. if ``norm_sum``, every pixel is divided by its NaN-ignoring channel sum; pixels whose sum is not positive
       become NaN;
    4. every channel is divided by ``divisor`` (skipped if None);
    5. values are capped at ``cap_max`` (skipped if None); NaN stays NaN.
    """
    dtype = block.dtype
    with np.errstate(invalid="ignore", divide="ignore"):
        total = block.sum(axis=0)
        keep = ~np.isnan(total)
        if threshold is not None:
            keep &= total > threshold
        out = np.where(keep, block, np.nan).astype(dtype, copy=False)
        if norm_sum:
            pixel_sum = np.nansum(out, axis=0)
            out = np.where(pixel_sum > 0, out / pixel_sum, np.nan).astype(dtype, copy=False)
        if divisor is not None:
            out = out / divisor[:, None, None, None]
        if cap_max is not None:
            out = np.minimum(out, dtype.type(cap_max))
    return out.astype(dtype, copy=False)


def _float_keys(values, key_dtype):
    """Map floats to unsigned integers of the same width whose order is the order of the floats (no NaN)."""
    bits = values.view(key_dtype)
    sign = key_dtype(1) << key_dtype(values.dtype.itemsize * 8 - 1)
    return np.where(bits & sign, ~bits, bits | sign)


def _keys_to_floats(keys, float_dtype):
    """Inverse of :func:`_float_keys`: unsigned integer keys (any unsigned dtype) back to ``float_dtype`` values."""
    key_dtype = np.dtype(f"u{np.dtype(float_dtype).itemsize}").type
    keys = np.asarray(keys).astype(key_dtype)
    sign = key_dtype(1) << key_dtype(np.dtype(float_dtype).itemsize * 8 - 1)
    bits = np.where(keys & sign, keys & ~sign, ~keys).astype(key_dtype)
    return bits.view(float_dtype)


def _digit_histogram_block(block, *, key_float, shift, prefixes):
    """Histogram of one 16-bit digit of the order keys of the non-zero, non-NaN values of every channel of a block.

    ``block`` has shape ``(c, ...)``; values are cast (exactly) to ``key_float`` and mapped to order keys. The digit is
    ``(key >> shift) & 0xFFFF``. With ``prefixes=None`` every value counts and the result has shape
    ``(c, 1, ..., 1, 1, 65536)``; otherwise ``prefixes`` has shape ``(c, n_targets)`` and target ``t`` of channel ``c``
    counts only the values whose key bits above the digit equal ``prefixes[c, t]``: shape
    ``(c, 1, ..., 1, n_targets, 65536)``.
    """
    key_float = np.dtype(key_float)
    key_dtype = np.dtype(f"u{key_float.itemsize}").type
    n_channels = block.shape[0]
    n_targets = 1 if prefixes is None else prefixes.shape[1]
    out = np.zeros((n_channels, n_targets, _N_BINS), dtype=np.int64)
    values = block.reshape(n_channels, -1)
    for c in range(n_channels):
        v = values[c]
        v = v[(v != 0) & ~np.isnan(v)].astype(key_float, copy=False)
        keys = _float_keys(v, key_dtype)
        digits = ((keys >> key_dtype(shift)) & key_dtype(_N_BINS - 1)).astype(np.intp)
        if prefixes is None:
            out[c, 0] = np.bincount(digits, minlength=_N_BINS)
            continue
        high = keys >> key_dtype(shift + _DIGIT_BITS)
        for t in range(n_targets):
            if t > 0 and prefixes[c, t] == prefixes[c, t - 1]:
                out[c, t] = out[c, t - 1]
            else:
                out[c, t] = np.bincount(digits[high == prefixes[c, t]], minlength=_N_BINS)
    return out.reshape((n_channels,) + (1,) * (block.ndim - 1) + (n_targets, _N_BINS))


# ------------------------------------------------------------------------------------------------------ lazy stages


def _normalized(arr, quantiles, dtype):
    """Lazy :func:`_scale_block` over a ``(c, z, y, x)`` dask array with one channel chunk."""
    divisor = None if quantiles is None else np.asarray(quantiles).astype(dtype)
    return arr.map_blocks(
        _scale_block, divisor=divisor, cast_to=dtype, dtype=dtype, meta=np.empty((0,) * 4, dtype=dtype)
    )


def _blurred(arr, sigmas):
    """Lazy per-channel Gaussian blur of the ``(y, x)`` planes; chunk borders are handled with an overlap."""
    if sigmas is None or not np.any(sigmas > 0):
        return arr
    radius = int(_TRUNCATE * float(np.max(sigmas)) + 0.5)
    # A depth of size - 1 already shows every block the whole axis; dask refuses depths beyond the array.
    depth = {0: 0, 1: 0, 2: min(radius, arr.shape[2] - 1), 3: min(radius, arr.shape[3] - 1)}
    return arr.map_overlap(
        _blur_block,
        depth=depth,
        boundary="none",
        sigmas=tuple(float(s) for s in sigmas),
        dtype=arr.dtype,
        meta=np.empty((0,) * 4, dtype=arr.dtype),
    )


def _finished(arr, threshold, norm_sum, post_quantiles, cap_max):
    """Lazy :func:`_finish_block`; statistics are cast to the array's dtype as harpy does."""
    dtype = arr.dtype
    return arr.map_blocks(
        _finish_block,
        threshold=None if threshold is None else dtype.type(threshold),
        norm_sum=norm_sum,
        divisor=None if post_quantiles is None else np.asarray(post_quantiles).astype(dtype),
        cap_max=cap_max,
        dtype=dtype,
        meta=np.empty((0,) * 4, dtype=dtype),
    )


def _channel_sum(arr):
    """Lazy ``(1, z, y, x)`` channel sum of a ``(c, z, y, x)`` dask array with one channel chunk."""
    return arr.map_blocks(
        _channel_sum_block, chunks=((1,),) + arr.chunks[1:], dtype=arr.dtype, meta=np.empty((0,) * 4, arr.dtype)
    )


def _digit_histograms(arr, *, key_float, shift, prefixes):
    """Lazy ``(c, n_targets, 65536)`` digit histogram of a ``(c, ...)`` dask array (see ``_digit_histogram_block``)."""
    n_targets = 1 if prefixes is None else prefixes.shape[1]
    chunks = (arr.chunks[0],) + tuple((1,) * n for n in arr.numblocks[1:]) + ((n_targets,), (_N_BINS,))
    hist = arr.map_blocks(
        _digit_histogram_block,
        key_float=np.dtype(key_float).str,
        shift=shift,
        prefixes=prefixes,
        chunks=chunks,
        new_axis=[arr.ndim, arr.ndim + 1],
        dtype=np.int64,
        meta=np.empty((0,) * (arr.ndim + 2), dtype=np.int64),
    )
    return hist.sum(axis=tuple(range(1, arr.ndim)), split_every=8)


# ------------------------------------------------------------------------------------------------------ percentiles


def _select_digits(hist, ranks):
    """Digit holding the 0-based ``ranks`` (shape ``(c, t)``) in ``hist`` (``(c, t, bins)``), and the rank within it."""
    cumulative = np.cumsum(hist, axis=-1)
    digits = np.minimum((cumulative <= ranks[..., None]).sum(axis=-1), _N_BINS - 1)
    before = np.where(digits > 0, np.take_along_axis(cumulative, np.maximum(digits - 1, 0)[..., None], -1)[..., 0], 0)
    return digits.astype(np.uint64), ranks - before


def _lerp(a, b, t):
    """Linear interpolation from ``a`` to ``b``, with the two-sided formula numpy's ``percentile`` uses."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _nonzero_percentiles(arrays, q, *, pooled):
    """Exact percentile ``q`` of the non-zero, non-NaN values of every channel of ``(c, ...)`` dask arrays.

    The result equals ``numpy.percentile`` (method ``"linear"``) of those values in float64, for any chunking. It is
    found by radix selection on order-preserving integer keys of the floats: every pass is one chunk-by-chunk
    reduction to a ``(c, 1 or 2, 65536)`` int64 histogram of one 16-bit digit of the keys of the two values that
    bracket the percentile (one histogram while they share their leading digits), so the data are read ``bits / 16``
    times and never held in memory at once; each chunk adds one such histogram to the dask graph's working memory.

    Parameters
    ----------
    arrays : list of dask arrays of shape (c, ...)
        Same number of channels; float dtypes.
    q : float
        Percentile in [0, 100].
    pooled : bool
        If True, one percentile over the values of all arrays; otherwise one per array.

    Returns
    -------
    ndarray of shape (n_groups, c)
        float64; ``n_groups`` is 1 if ``pooled`` else ``len(arrays)``. NaN where a channel has no non-zero, non-NaN
        value.
    """
    key_float = np.result_type(*[a.dtype for a in arrays])
    n_bits = key_float.itemsize * 8
    groups = [list(range(len(arrays)))] if pooled else [[i] for i in range(len(arrays))]
    prefixes = [None] * len(groups)
    ranks, gammas, counts = [None] * len(groups), [None] * len(groups), [None] * len(groups)
    for p in range(n_bits // _DIGIT_BITS):
        shift = n_bits - _DIGIT_BITS * (p + 1)
        # Both bracketing values usually share their leading digits: then one histogram serves both.
        shared = [p > 0 and bool(np.all(prefixes[g][:, 0] == prefixes[g][:, 1])) for g in range(len(groups))]
        lazy = [
            _digit_histograms(
                arrays[i],
                key_float=key_float,
                shift=shift,
                prefixes=None if p == 0 else prefixes[g][:, :1] if shared[g] else prefixes[g],
            )
            for g, members in enumerate(groups)
            for i in members
        ]
        computed = iter(dask.compute(*lazy))
        for g, members in enumerate(groups):
            hist = sum(next(computed) for _ in members)
            if p == 0:
                n = hist[:, 0].sum(axis=-1)
                virtual = (n - 1) * np.true_divide(q, 100)
                low = np.maximum(np.floor(virtual), 0).astype(np.int64)
                high = np.maximum(np.minimum(low + 1, n - 1), 0)
                counts[g], gammas[g] = n, virtual - low
                ranks[g] = np.stack([low, high], axis=1)
                prefixes[g] = np.zeros(ranks[g].shape, dtype=np.uint64)
            if hist.shape[1] == 1:
                hist = np.repeat(hist, 2, axis=1)
            digits, ranks[g] = _select_digits(hist, ranks[g])
            prefixes[g] = (prefixes[g] << np.uint64(_DIGIT_BITS)) | digits
    result = np.empty((len(groups), arrays[0].shape[0]))
    for g in range(len(groups)):
        bracket = _keys_to_floats(prefixes[g], key_float).astype(np.float64)
        with np.errstate(invalid="ignore"):
            value = _lerp(bracket[:, 0], bracket[:, 1], gammas[g])
        result[g] = np.where(counts[g] > 0, value, np.nan)
    return result


# -------------------------------------------------------------------------------------------------------- estimator


def _working_dtype(dtype):
    """float64 stays float64; every other dtype (integers, bool, float16, float32) is processed as float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _as_dask_4d(image):
    """Return the data of a validated image as a ``(c, z, y, x)`` dask array with one chunk along ``c``."""
    arr = _as_dask(image.data).rechunk({0: -1})
    return arr[:, None] if arr.ndim == 3 else arr


def _as_dask(data):
    return data if isinstance(data, da.Array) else da.asarray(np.asarray(data))


def _select_channels(image, positions):
    """Select the channels at ``positions`` of ``image``, lazily (a numpy-backed image is wrapped, not copied)."""
    if np.array_equal(positions, np.arange(image.sizes["c"])):
        return image
    return image.copy(deep=False, data=_as_dask(image.data)).isel(c=positions)


class PixelPreprocessor(TransformerMixin, VersionedPickleMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Per-channel normalisation, blur and pixel-sum normalisation of multiplexed images before pixel clustering.

    This is ``harpy.im.pixel_clustering_preprocess`` as a transformer: ``fit`` computes the statistics, ``transform``
    applies them lazily. The steps, in harpy's order, all optional:

    1. Divide every channel by its ``q``-th percentile (no clipping, no lower percentile).
    2. Gaussian blur of every ``(y, x)`` plane with the channel's ``sigma``.
    3. Pixels whose channel sum is NaN become NaN in every channel; pixels whose channel sum is not above the
       ``q_sum``-th percentile of the channel sums of step 1 (before the blur) become NaN.
    4. If ``norm_sum``, divide every pixel by its channel sum (NaN ignored); pixels with a zero sum become NaN.
    5. Divide every channel by its ``q_post``-th percentile after steps 1-4.
    6. Cap values at ``cap_max``.

    Every percentile is taken over the non-zero, non-NaN pixels (all z planes) of each image, and averaged over
    images (``combine="mean"``, as harpy and ark-analysis do) or taken over the pixels of all images at once
    (``combine="pooled"``).

    Parameters
    ----------
    channels : str, int, list or None, default=None
        The channels to preprocess, by the labels of the images' ``c`` coordinate (as ``image.sel(c=channels)``
        selects), in this order; the output holds only them. ``None``: all channels of the first image. Every image
        given to ``fit`` and ``transform`` must have these channels, in any order and with any others beside them.
    q : float in [0, 100] or None, default=99.0
        Percentile of every channel's non-zero, non-NaN pixels that the channel is divided by. ``None`` skips it.
    q_sum : float in [0, 100] or None, default=5.0
        Percentile of the non-zero, non-NaN pixel channel sums (after ``q``, before the blur) that a pixel's channel
        sum (after the blur) must exceed; other pixels become NaN. ``None`` skips it.
    q_post : float in [0, 100] or None, default=99.9
        Percentile of every channel after ``sigma``, ``q_sum`` and ``norm_sum`` that the channel is divided by.
        ``None`` skips it.
    sigma : float >= 0, array-like of shape (n_channels,) or None, default=2.0
        Standard deviation in pixels of the Gaussian blur of the ``(y, x)`` planes, one for all channels or one per
        channel; 0 leaves a channel unblurred and ``None`` skips the blur. The kernel is truncated at 4 standard
        deviations and the image borders are reflected (scipy's and dask-image's defaults).
    norm_sum : bool, default=True
        Divide every pixel by the sum of its channels.
    cap_max : float > 0 or None, default=None
        Upper bound of the output values (e.g. 1.0); ``None`` does not cap.
    combine : {"mean", "pooled"}, default="mean"
        How the percentiles of a list of images are combined: ``"mean"`` averages the per-image percentiles (harpy),
        ``"pooled"`` takes the percentile of the pixels of all images.

    Attributes
    ----------
    channel_names_ : ndarray of shape (n_channels,)
        The channels preprocessed, in the output's order: ``channels``, or the ``c`` coordinate of the first image
        seen in ``fit`` (``0 .. n_channels - 1`` if it has none). ``transform`` selects them by label from every image.
    n_features_in_ : int
        Number of channels seen in ``fit``.
    quantiles_ : ndarray of shape (n_channels,) or None
        The ``q``-th percentiles (float64) the channels are divided by; ``None`` if ``q`` is None.
    sum_threshold_ : float or None
        The ``q_sum``-th percentile of the channel sums; ``None`` if ``q_sum`` is None.
    post_quantiles_ : ndarray of shape (n_channels,) or None
        The ``q_post``-th percentiles (float64) the channels are divided by in step 5; ``None`` if ``q_post`` is None.

    See Also
    --------
    pixelflowsom.PixelFlowSOM : FlowSOM clustering of the preprocessed pixels.

    Notes
    -----
    Inputs are :class:`xarray.DataArray` images with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")``, numpy- or
    dask-backed, or a list of them. ``transform`` returns the same structure with dask-backed images of the same dims,
    coords, name and attrs: float64 for float64 input, float32 otherwise. Nothing is computed until the result is.

    Differences from harpy (``src/harpy/image/pixel_clustering/_preprocess.py`` and the percentile helpers in
    ``src/harpy/image/_normalize.py``):

    - Percentiles are exact: numpy's ``"linear"`` percentile of the non-zero, non-NaN values, whatever the chunking.
      harpy uses ``dask.array.percentile(..., internal_method="tdigest")``, a t-digest approximation that depends on
      the chunks. The exact computation reads the data chunk by chunk, twice per percentile for float32 (four times
      for float64; ``fit`` recomputes the blur for ``q_post``), and never loads an image whole.
    - Statistics are computed and averaged in float64 and cast to the image dtype when applied; harpy casts every
      per-image percentile to float32 before averaging.
    - A percentile with no non-zero, non-NaN pixel to compute it from (an all-zero channel) is NaN in harpy, which
      makes every pixel NaN. Here images without such pixels are left out of the mean, and if no image has any the
      step is skipped for that channel (divisor 1, or no sum threshold) with a warning.
    - float64 images stay float64 (harpy casts to float32 by default); other dtypes become float32 as in harpy.
    - harpy's ``chunks``, ``scale_factors``, ``persist_intermediate`` and ``overwrite`` concern reading from and
      writing to SpatialData: rechunk or persist the output. ``channels`` is harpy's.
      Images in a list may mix 2D and 3D.

    As harpy notes, ``q_sum`` and ``norm_sum`` mix information across channels and statistics of a list of images
    mix information across images; set them to ``None``/``False`` to avoid it.

    Examples
    --------
    >>> import numpy as np
    >>> import xarray as xr
    >>> from pixelflowsom._preprocessing import PixelPreprocessor
    >>> rng = np.random.default_rng(0)
    >>> image = xr.DataArray(
    ...     rng.poisson(3.0, size=(3, 32, 32)).astype(np.uint16),
    ...     dims=("c", "y", "x"),
    ...     coords={"c": ["CD3", "CD20", "DAPI"]},
    ... )
    >>> pre = PixelPreprocessor(sigma=1.0).fit(image)
    >>> pre.quantiles_
    array([7., 8., 8.])
    >>> out = pre.transform(image)
    >>> out.dims, out.dtype, type(out.data).__name__
    (('c', 'y', 'x'), dtype('float32'), 'Array')
    >>> bool(np.nanmax(out.values) <= 1.5)
    True
    """

    _parameter_constraints: dict = {
        "channels": [str, Integral, "array-like", None],
        "q": [Interval(Real, 0, 100, closed="both"), None],
        "q_sum": [Interval(Real, 0, 100, closed="both"), None],
        "q_post": [Interval(Real, 0, 100, closed="both"), None],
        "sigma": [Interval(Real, 0, None, closed="left"), "array-like", None],
        "norm_sum": ["boolean"],
        "cap_max": [Interval(Real, 0, None, closed="neither"), None],
        "combine": [StrOptions({"mean", "pooled"})],
    }

    def __init__(
        self,
        *,
        channels=None,
        q=99.0,
        q_sum=5.0,
        q_post=99.9,
        sigma=2.0,
        norm_sum=True,
        cap_max=None,
        combine="mean",
    ):
        self.channels = channels
        self.q = q
        self.q_sum = q_sum
        self.q_post = q_post
        self.sigma = sigma
        self.norm_sum = norm_sum
        self.cap_max = cap_max
        self.combine = combine

    # ------------------------------------------------------------------ validation

    def _validate_images(self, X, *, reset):
        """Check the images and find the channels to preprocess in them by label.

        Returns ``(images, channel_names, was_a_list)``: every image reduced (lazily) to the channels, in their order.
        """
        was_list = isinstance(X, list | tuple)
        images = list(X) if was_list else [X]
        if was_list and not images:
            raise ValueError("Got an empty list of images; pass at least one xarray.DataArray image.")
        for i, image in enumerate(images):
            where = f"Image {i}" if was_list else "The image"
            if not isinstance(image, xr.DataArray):
                raise TypeError(
                    f"{type(self).__name__} expects an xarray.DataArray image with dims {_DIMS_2D} or {_DIMS_3D}, or "
                    f"a list of them; {where.lower()} is a {type(image).__module__}.{type(image).__qualname__}. Wrap "
                    "an array with xarray.DataArray(arr, dims=('c', 'y', 'x'), coords={'c': channel_names})."
                )
            dims = tuple(image.dims)
            if dims not in (_DIMS_2D, _DIMS_3D):
                if "c" not in dims:
                    hint = "it has no channel dim 'c'; add one with image.expand_dims(c=['name'])"
                elif unknown := [d for d in dims if d not in _DIMS_3D]:
                    hint = f"dims {unknown} are not allowed; select or rename them (image.isel / image.rename)"
                elif set(dims) in (set(_DIMS_2D), set(_DIMS_3D)):
                    hint = f"reorder them with image.transpose{_DIMS_3D if 'z' in dims else _DIMS_2D}"
                else:
                    hint = "a 2D image needs ('y', 'x') and a 3D image ('z', 'y', 'x') after 'c'"
                raise ValueError(f"{where} has dims {dims}; expected {_DIMS_2D} or {_DIMS_3D}: {hint}.")
            if image.dtype.kind not in "biuf":
                raise TypeError(f"{where} has dtype {image.dtype}; expected numbers. Cast it with image.astype(float).")
            image_names = _images.channel_labels(image)
            if len({str(c) for c in image_names}) != len(image_names):
                raise ValueError(
                    f"{where} has duplicate channel names {image_names}; give every channel a unique name."
                )
        if reset:
            names = _images.resolve_channels(self.channels, images[0])
            fix = "Pass channels that every image has."
        else:
            names = [_images.plain(c) for c in self.channel_names_]
            fix = f"{type(self).__name__} was fitted on channels {names}; every image needs them (in any order)."
        selected = [
            _select_channels(image, _images.channel_positions(image, names, i, fix=fix))
            for i, image in enumerate(images)
        ]
        return selected, np.asarray(names), was_list

    def _resolve_sigmas(self, n_channels):
        """Per-channel standard deviations of the blur, or None without blur."""
        if self.sigma is None:
            return None
        sigmas = np.asarray(self.sigma, dtype=np.float64)
        if sigmas.ndim == 0:
            return np.full(n_channels, float(sigmas))
        if sigmas.shape != (n_channels,) or not np.all(np.isfinite(sigmas) & (sigmas >= 0)):
            raise ValueError(
                f"sigma={self.sigma!r} must be one non-negative number or one per channel ({n_channels} channels); "
                "use 0 to leave a channel unblurred."
            )
        return sigmas

    def _percentile(self, arrays, q, *, step, channel_names):
        """Combine the percentiles of ``arrays`` per channel; warn about undefined ones (left NaN)."""
        per_group = _nonzero_percentiles(arrays, q, pooled=self.combine == "pooled")
        defined = ~np.isnan(per_group)
        n_defined = defined.sum(axis=0)
        value = np.where(n_defined > 0, np.where(defined, per_group, 0).sum(axis=0) / np.maximum(n_defined, 1), np.nan)
        if np.isnan(value).any():
            warnings.warn(
                f"{step}: channel(s) {channel_names[np.isnan(value)].tolist()} have no non-zero, non-NaN pixel to "
                "compute the percentile from; the step is skipped for them.",
                UserWarning,
                stacklevel=4,
            )
        return value

    def check_input(self, X=None):
        """Check the parameters and the images as ``fit`` (once fitted: ``transform``) does, without reading a pixel.

        Parameters
        ----------
        X : xarray.DataArray, list of xarray.DataArray or None, default=None
            The images ``fit`` or ``transform`` will get; ``None`` checks the parameters only.

        Returns
        -------
        channels : list or None
            The labels of the channels preprocessed, in the output's order (``channel_names_`` once fitted); None if
            not fitted, ``X`` is None and ``channels`` is None.

        Raises
        ------
        ValueError, TypeError, KeyError
            Bad parameters, images, or channels missing from an image (with the closest names).
        """
        validate_params(self)
        fitted = hasattr(self, "channel_names_")
        if X is None:
            if fitted:
                return [_images.plain(c) for c in self.channel_names_]
            if self.channels is None:
                return None
            names = _images.resolve_channels(self.channels, None)
        else:
            _, names, _ = self._validate_images(X, reset=not fitted)
            names = [_images.plain(c) for c in names]
        self._resolve_sigmas(len(names))
        return names

    # ------------------------------------------------------------------ fit / transform

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the per-channel percentiles (and the pixel-sum threshold) of the images.

        Parameters
        ----------
        X : xarray.DataArray or list of xarray.DataArray
            Image(s) with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")``, numpy- or dask-backed, all with the
            same channels in the same order. Dask-backed images are read chunk by chunk.
        y : None
            Ignored.

        Returns
        -------
        self : PixelPreprocessor
            The fitted transformer.
        """
        images, names, _ = self._validate_images(X, reset=True)
        sigmas = self._resolve_sigmas(len(names))
        arrays = [_as_dask_4d(image) for image in images]
        dtypes = [_working_dtype(a.dtype) for a in arrays]

        quantiles = None
        if self.q is not None:
            cast = [_normalized(a, None, dt) for a, dt in zip(arrays, dtypes, strict=True)]
            quantiles = self._percentile(cast, self.q, step=f"q={self.q}", channel_names=names)
            quantiles = np.where(np.isnan(quantiles), 1.0, quantiles)
        normalized = [_normalized(a, quantiles, dt) for a, dt in zip(arrays, dtypes, strict=True)]

        threshold = None
        if self.q_sum is not None:
            sums = [_channel_sum(a) for a in normalized]
            value = self._percentile(sums, self.q_sum, step=f"q_sum={self.q_sum}", channel_names=np.array(["sum"]))
            threshold = None if np.isnan(value[0]) else float(value[0])

        post_quantiles = None
        if self.q_post is not None:
            pre = [_finished(_blurred(a, sigmas), threshold, self.norm_sum, None, None) for a in normalized]
            post_quantiles = self._percentile(pre, self.q_post, step=f"q_post={self.q_post}", channel_names=names)
            post_quantiles = np.where(np.isnan(post_quantiles), 1.0, post_quantiles)

        self._sigmas = sigmas
        self.channel_names_ = names
        self.n_features_in_ = len(names)
        self.quantiles_ = quantiles
        self.sum_threshold_ = threshold
        self.post_quantiles_ = post_quantiles
        return self

    def transform(self, X):
        """Preprocess the image(s) lazily with the fitted statistics.

        Parameters
        ----------
        X : xarray.DataArray or list of xarray.DataArray
            Image(s) with the channels seen in ``fit``, in the same order.

        Returns
        -------
        X_new : xarray.DataArray or list of xarray.DataArray
            Like ``X`` (same dims, coords, name and attrs), dask-backed and not computed; float64 for float64 input,
            float32 otherwise.
        """
        check_is_fitted(self)
        images, _, was_list = self._validate_images(X, reset=False)
        out = []
        for image in images:
            arr = _as_dask_4d(image)
            arr = _normalized(arr, self.quantiles_, _working_dtype(arr.dtype))
            arr = _blurred(arr, self._sigmas)
            arr = _finished(arr, self.sum_threshold_, self.norm_sum, self.post_quantiles_, self.cap_max)
            if image.ndim == 3:
                arr = arr[:, 0]
            out.append(image.copy(deep=False, data=arr))
        return out if was_list else out[0]

    def set_output(self, *, transform=None):
        """Accept an output configuration, as in a ``Pipeline.set_output`` call; images stay images.

        ``transform`` returns images whatever the configuration (a DataFrame of an image would lose its axes); the
        configuration is stored so that a pipeline's ``set_output`` reaches the steps that output tables.

        Parameters
        ----------
        transform : {"default", "pandas", "polars"} or None, default=None
            The configuration; ``None`` leaves it unchanged.

        Returns
        -------
        self : PixelPreprocessor
            The transformer.
        """
        return set_output_config(self, transform)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.two_d_array = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
