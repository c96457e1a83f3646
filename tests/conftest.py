import numpy as np
import pytest


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
