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
