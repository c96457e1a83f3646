"""The SOM kernels against plain numpy references, and the batch SOM's quality."""

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist
from sklearn.utils import check_random_state

from pixelflowsom import _som
from pixelflowsom._nearest import nearest_nodes

from .conftest import make_blobs


def reference_online_som(data, codes, nhbrdist, rlen, alphas, radii, rs):
    """FlowSOM's C_SOM, written node by node in plain numpy (R's early stop included)."""
    codes = codes.copy()
    n = data.shape[0]
    niter = rlen * n
    step = (radii[0] - radii[1]) / niter
    threshold = radii[0]
    k = 0
    for _ in range(rlen):
        change = 0.0
        for i in rs.randint(0, n, size=n):
            nearest = int(np.argmin(((data[i] - codes) ** 2).sum(axis=1)))
            if threshold < 1.0:
                threshold = 0.5
            alpha = alphas[0] - (alphas[0] - alphas[1]) * k / niter
            for cd in range(codes.shape[0]):
                if nhbrdist[cd, nearest] > threshold:
                    continue
                tmp = data[i] - codes[cd]
                change += np.abs(tmp).sum()
                codes[cd] += tmp * alpha
            threshold -= step
            k += 1
        if change < 1.0:
            break
    return codes


@pytest.mark.parametrize(("xdim", "ydim"), [(3, 4), (5, 5), (1, 6)])
def test_online_som_matches_numpy_reference(xdim, ydim):
    X, _ = make_blobs(n=150, p=4, seed=xdim)
    nh = _som.grid_distances(xdim, ydim)
    (radii, alphas) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)[0]
    codes0 = X[check_random_state(0).choice(len(X), xdim * ydim, replace=False)]
    expected = reference_online_som(X, codes0, nh, 3, alphas, radii, check_random_state(1))
    # Grid windows (ydim given) and the generic neighbourhood loop must both equal the reference.
    for ydim_arg in (ydim, 0):
        got, n_iter = _som.online_som(X, codes0, nh, 3, alphas, radii, check_random_state(1), ydim=ydim_arg)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert n_iter == 3


def test_online_som_does_not_modify_inputs():
    X, _ = make_blobs(n=50, p=3)
    codes0 = X[:9].copy()
    nh = _som.grid_distances(3, 3)
    before = codes0.copy()
    _som.online_som(X, codes0, nh, 2, (0.05, 0.01), (2.0, 0.0), check_random_state(0), ydim=3)
    np.testing.assert_array_equal(codes0, before)


def test_online_som_stops_when_codes_stop_changing():
    # Constant data equal to the codes: nothing changes, R's change test stops after the first pass.
    X = np.ones((20, 3))
    codes, n_iter = _som.online_som(
        X, np.ones((4, 3)), _som.grid_distances(2, 2), 10, (0.05, 0.01), (1.0, 0.0), check_random_state(0), ydim=2
    )
    assert n_iter == 1
    np.testing.assert_array_equal(codes, 1.0)


def test_grid_matches_flowsom_node_order():
    grid = _som.grid_coordinates(3, 2)
    np.testing.assert_array_equal(grid, [(x, y) for x in range(3) for y in range(2)])
    nh = _som.grid_distances(3, 2)
    np.testing.assert_array_equal(nh, cdist(grid, grid, metric="chebyshev"))


def test_radius_alpha_schedule():
    nh = _som.grid_distances(10, 10)
    (((r0, r1), (a0, a1)),) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)
    assert r0 == pytest.approx(np.quantile(nh, 0.67))
    assert (r1, a0, a1) == (0.0, 0.05, 0.01)
    phases = _som.radius_alpha_schedule(nh, (0.05, 0.01), 2)
    assert len(phases) == 2
    assert phases[0][0][1] == pytest.approx(phases[1][0][0]) == pytest.approx(r0 / 2)
    assert phases[0][1][1] == pytest.approx(phases[1][1][0]) == pytest.approx(0.03)


def test_mst_distances_are_tree_hops():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(12, 3))
    hops = _som.mst_distances(codes)
    tree = minimum_spanning_tree(cdist(codes, codes)).toarray()
    edges = (tree > 0) | (tree.T > 0)
    np.testing.assert_array_equal(hops == 1, edges)
    assert hops.max() < 12
    np.testing.assert_array_equal(hops, hops.T)
    # Duplicate codes are still connected.
    assert np.isfinite(_som.mst_distances(np.zeros((4, 2)))).all()


def reference_batch_epoch(data, codes, nhbrdist, radius):
    labels = np.argmin(cdist(data, codes, "sqeuclidean"), axis=1)
    new = codes.copy()
    for cd in range(len(codes)):
        members = np.isin(labels, np.flatnonzero(nhbrdist[cd] <= radius))
        if members.any():
            new[cd] = data[members].mean(axis=0)
    return new


def test_batch_som_epoch_matches_numpy_reference():
    X, _ = make_blobs(n=300, p=3, seed=4)
    X = X.astype(np.float32).astype(np.float64)  # the batch SOM accumulates float32 pixels (in float64)
    nh = _som.grid_distances(4, 4)
    codes0 = X[:16].copy()
    got, _ = _som.batch_som(X, codes0, nh, 1, (2.0, 0.0))
    np.testing.assert_allclose(got, reference_batch_epoch(X, codes0, nh, 2.0), rtol=1e-10)


def test_batch_som_quantization_error_close_to_online():
    X, _ = make_blobs(n=20_000, p=10, n_centers=8, spread=0.3, seed=5)
    nh = _som.grid_distances(10, 10)
    (radii, alphas) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)[0]
    codes0 = X[check_random_state(0).choice(len(X), 100, replace=False)]
    online, _ = _som.online_som(X, codes0, nh, 10, alphas, radii, check_random_state(1), ydim=10)
    batch, _ = _som.batch_som(X, codes0, nh, 10, radii)

    def qe(codes):
        return nearest_nodes(X, codes, return_distances=True)[1].mean()

    assert qe(batch) <= 1.05 * qe(online)
