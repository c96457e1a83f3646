import numpy as np
import pytest
from scipy.spatial.distance import cdist


def make_blobs(n=600, p=5, n_centers=4, spread=0.15, seed=0):
    """Well separated Gaussian blobs and their true labels."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 4, size=(n_centers, p))
    y = rng.integers(0, n_centers, n)
    return centers[y] + rng.normal(0, spread, size=(n, p)), y


@pytest.fixture(scope="session")
def blobs():
    X, y = make_blobs()
    X.setflags(write=False)
    return X, y


def nearest_reference(X, codes):
    """Independent expectation of every labelling path: the float64 brute-force nearest code, lowest on ties.

    ``X`` is ``(n, p)``; rows with a non-finite value get -1.
    """
    X = np.asarray(X, dtype=np.float64)
    out = np.full(len(X), -1, dtype=np.int64)
    finite = np.isfinite(X).all(axis=1)
    if finite.any():
        out[finite] = cdist(X[finite], np.asarray(codes, dtype=np.float64), "sqeuclidean").argmin(axis=1)
    return out


def image_reference(image, codes, node_metacluster, channels=None):
    """Expected ``(2, [z,] y, x)`` label stack ``[som_node, metacluster]`` (1-based, 0 at NaN) of an image.

    Computed from ``image.sel(c=channels)`` (all channels for ``None``) and the codes, in float64, pixel by pixel.
    """
    selected = (
        image if channels is None else image.sel(c=list(channels) if not isinstance(channels, str) else [channels])
    )
    values = np.asarray(selected.values, dtype=np.float64)
    spatial = values.shape[1:]
    nodes = nearest_reference(values.reshape(values.shape[0], -1).T, codes)
    metas = np.where(nodes >= 0, np.asarray(node_metacluster)[np.maximum(nodes, 0)] + 1, 0)
    return np.stack([nodes + 1, metas]).reshape((2, *spatial))


def fma32(a, b, c):
    """``a * b + c`` rounded once to float32 (the fused multiply-add) for float32 values, in plain numpy.

    The product of two float32 is exact in float64, but ``s = a * b + c`` in float64 is rounded, and rounding ``s``
    to float32 then rounds twice. The two roundings differ from one only when ``s`` lands exactly halfway between
    two float32 while the exact sum ``s + e`` (``e`` by TwoSum) lies off it: the exact sum then rounds to the
    float32 on the side of ``e``.
    """
    a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
    product = a.astype(np.float64) * b.astype(np.float64)
    addend = c.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = product + addend
        v = s - product
        e = (product - (s - v)) + (addend - v)
        rounded = s.astype(np.float32)
        back = rounded.astype(np.float64)
        other = np.nextafter(rounded, np.where(s > back, np.inf, -np.inf).astype(np.float32))
        halfway = (s != back) & (2 * s == back + other.astype(np.float64))
        return np.where(halfway & (e != 0) & ((e > 0) == (other > rounded)), other, rounded)


def muladd32(a, b, c, fused=None):
    """``a * b + c`` for float32 values as :func:`pixelflowsom._simd.muladd` computes it, in plain numpy.

    Fused (:func:`fma32`, rounded once) when ``fused`` is true, else the float32 product, then the float32 sum (rounded
    twice); ``fused=None`` is the kernels' path in this process (:func:`pixelflowsom._simd.fused`).
    """
    from pixelflowsom import _simd

    if _simd.fused() if fused is None else fused:
        return fma32(a, b, c)
    a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
    with np.errstate(invalid="ignore", over="ignore"):
        return a * b + c


def flush32(values):
    """float32 ``values`` with every magnitude below the smallest normal float32 (``2**-126``) replaced by ``+0.0``.

    The online SOM's flush to zero, in plain numpy (NaN and infinities are kept).
    """
    values = np.asarray(values, dtype=np.float32)
    return np.where(np.abs(values) < np.finfo(np.float32).tiny, np.float32(0.0), values)
