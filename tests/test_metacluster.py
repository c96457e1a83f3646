"""Metaclustering: flowsom's default and R FlowSOM's consensus clustering."""

import numpy as np
import pytest
from flowsom.models import ConsensusCluster
from sklearn.metrics import adjusted_rand_score

from pixelflowsom import ConsensusClustering
from pixelflowsom._metacluster import default_metaclustering

from .conftest import make_blobs


def test_default_equals_flowsom_metaclustering():
    codes, _ = make_blobs(n=100, p=6, n_centers=5, spread=0.4, seed=3)
    ours = default_metaclustering().set_params(n_clusters=5).fit_predict(codes)
    np.testing.assert_array_equal(ours, ConsensusCluster(n_clusters=5).fit_predict(codes))


def reference_consensus(X, k, n_resamples, fraction, seed):
    """ConsensusClusterPlus for one k, written with explicit loops over pairs."""
    from sklearn.cluster import AgglomerativeClustering

    rs = np.random.RandomState(seed)
    n = len(X)
    together = np.zeros((n, n))
    both = np.zeros((n, n))
    size = int(fraction * n)
    for _ in range(n_resamples):
        idx = np.sort(rs.choice(n, size=size, replace=False))
        lab = AgglomerativeClustering(n_clusters=k, linkage="average").fit_predict(X[idx])
        for a in range(size):
            for b in range(size):
                both[idx[a], idx[b]] += 1
                together[idx[a], idx[b]] += lab[a] == lab[b]
    cons = np.where(both > 0, together / np.maximum(both, 1), 0)
    np.fill_diagonal(cons, 1)
    return cons


def test_consensus_matrix_matches_reference():
    X, _ = make_blobs(n=30, p=3, n_centers=3, spread=0.8, seed=1)
    model = ConsensusClustering(n_clusters=3, n_resamples=15, random_state=7).fit(X)
    np.testing.assert_allclose(model.consensus_, reference_consensus(X, 3, 15, 0.9, 7))
    assert model.labels_.dtype == np.int64
    assert set(model.labels_) == {0, 1, 2}


def test_consensus_recovers_clear_clusters_and_is_reproducible():
    X, y = make_blobs(n=100, p=5, n_centers=4, spread=0.1, seed=2)
    a = ConsensusClustering(n_clusters=4, random_state=0).fit_predict(X)
    b = ConsensusClustering(n_clusters=4, random_state=0).fit_predict(X)
    np.testing.assert_array_equal(a, b)
    assert adjusted_rand_score(y, a) == 1.0


def test_single_cluster_and_ward():
    X, _ = make_blobs(n=20, p=2, seed=0)
    np.testing.assert_array_equal(ConsensusClustering(n_clusters=1, n_resamples=3).fit_predict(X), 0)
    assert len(set(ConsensusClustering(n_clusters=3, linkage="ward", n_resamples=5).fit_predict(X))) == 3


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_clusters": 0}, "n_clusters"),
        ({"n_clusters": 50}, "n_clusters=50 is larger than the number of rows"),
        ({"resample_fraction": 1.5}, "resample_fraction"),
        ({"linkage": "median"}, "linkage"),
    ],
)
def test_bad_parameters(params, match):
    X, _ = make_blobs(n=20, p=2)
    with pytest.raises(ValueError, match=match):
        ConsensusClustering(**params).fit(X)
