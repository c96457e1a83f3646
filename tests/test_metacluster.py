"""Metaclustering: flowsom's default, R FlowSOM's consensus clustering, and choosing the number of clusters."""

import time

import numpy as np
import pandas as pd
import pytest
from flowsom.models import ConsensusCluster
from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score

from pixelflowsom import ConsensusClustering
from pixelflowsom._metacluster import (
    _first_below,
    _first_minimum,
    _flowsom_smooth,
    _knee,
    _tree_wss,
    _two_line_residuals,
    _within_cluster_sum_of_squares,
    choose_n_clusters,
    default_metaclustering,
)

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


# ---------------------------------------------------------------------------------------------- choose_n_clusters


def loop_wss(X, labels, weight=None):
    """Weighted within-cluster sum of squares, one cluster and one row at a time."""
    weight = np.ones(len(X)) if weight is None else np.asarray(weight, dtype=float)
    total = 0.0
    for label in set(labels.tolist()):
        rows = [i for i in range(len(X)) if labels[i] == label]
        mass = sum(weight[i] for i in rows)
        if mass == 0:
            continue
        mean = sum(weight[i] * X[i] for i in rows) / mass
        total += sum(weight[i] * float(np.sum((X[i] - mean) ** 2)) for i in rows)
    return total


def loop_cdf_area(consensus, weight, bins=100):
    """ConsensusClusterPlus's area under the CDF of the pairs i < j of a square consensus matrix, with pair weights."""
    n = len(consensus)
    pairs = [(consensus[i, j], weight[i] * weight[j]) for i in range(n) for j in range(i + 1, n)]
    total = sum(w for _, w in pairs)
    cdf = [sum(w for c, w in pairs if c <= edge / bins + 1e-12) / total for edge in range(bins + 1)]
    return sum(cdf[1:]) / bins, np.array(cdf)


def test_within_cluster_sum_of_squares_by_hand():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    labels = np.array([0, 0, 1, 1])
    # cluster 0: mean (1, 0), 1 + 1; cluster 1: mean (10, 2), 4 + 4
    assert _within_cluster_sum_of_squares(X, labels, np.ones(4)) == pytest.approx(10.0)
    # weights 1, 3: mean (1.5, 0), 1 * 1.5^2 + 3 * 0.5^2 = 3; a zero-weight cluster adds nothing
    assert _within_cluster_sum_of_squares(X, labels, np.array([1.0, 3.0, 1.0, 1.0])) == pytest.approx(11.0)
    assert _within_cluster_sum_of_squares(X, labels, np.array([1.0, 3.0, 0.0, 0.0])) == pytest.approx(3.0)
    # integer weights are repeated rows
    assert _within_cluster_sum_of_squares(X, labels, np.array([1.0, 3.0, 2.0, 1.0])) == pytest.approx(
        _within_cluster_sum_of_squares(np.repeat(X, [1, 3, 2, 1], axis=0), np.repeat(labels, [1, 3, 2, 1]), np.ones(7))
    )


def test_flowsom_smoothing_is_sequential_as_in_r():
    # R: for (i in 2:(max - 1)) res[i] <- 0.8 * res[i] + 0.1 * res[i - 1] + 0.1 * res[i + 1], res[i - 1] already done.
    # 0.8*4 + 0.1*10 + 0.1*2 = 4.4; 0.8*2 + 0.1*4.4 + 0.1*1 = 2.14; 0.8*1 + 0.1*2.14 + 0.1*1 = 1.114
    np.testing.assert_allclose(_flowsom_smooth([10, 4, 2, 1, 1], 0.2), [10, 4.4, 2.14, 1.114, 1])
    np.testing.assert_allclose(_flowsom_smooth([3.0, 1.0], 0.2), [3.0, 1.0])
    np.testing.assert_allclose(_flowsom_smooth([5, 1, 7], 0.0), [5, 1, 7])


def test_two_line_residuals_by_hand():
    # k = 2: line through point 1 (0) + line through (2, 0), (3, 0), (4, 3): slope 1.5, fit -0.5, 1, 2.5 -> 0.5+1+0.5
    # k = 3: lines through two points each are exact.
    np.testing.assert_allclose(_two_line_residuals(np.array([0.0, 0.0, 0.0, 3.0])), [np.nan, 2.0, 0.0, np.nan])
    np.testing.assert_allclose(_two_line_residuals(np.array([5.0, 1.0])), [np.nan, 0.0])


@pytest.mark.parametrize("corner", [2, 5, 9])
def test_elbow_of_a_piecewise_linear_curve_is_its_corner(corner):
    k = np.arange(1, 13)
    y = np.where(k <= corner, 100.0 - 15.0 * (k - 1), 100.0 - 15.0 * (corner - 1) - 0.5 * (k - corner))
    residual = _two_line_residuals(y)
    # Splitting at the corner or just after it leaves both lines exact: R keeps the first minimum, the corner.
    assert residual[corner - 1] == pytest.approx(0.0, abs=1e-9)
    assert residual[corner] == pytest.approx(0.0, abs=1e-9)
    assert _first_minimum(residual) == corner
    # an independent two-line fit at another split is worse
    other = 7 if corner != 7 else 3
    left, right = slice(0, other - 1), slice(other - 1, None)
    expected = sum(
        np.abs(y[part] - np.polyval(np.polyfit(k[part], y[part], 1), k[part])).sum() if len(k[part]) > 2 else 0.0
        for part in (left, right)
    )
    assert residual[other - 1] == pytest.approx(expected)


def test_first_below_threshold_rule():
    # delta at k = 1..6; the first k whose successor adds less than 2 % is 4 (delta at 5 is 0.01).
    assert _first_below(np.array([np.nan, 0.5, 0.3, 0.1, 0.01, 0.05]), 0.02) == 4
    assert _first_below(np.array([np.nan, 0.5, 0.001, 0.1]), 0.02) == 2
    assert _first_below(np.array([np.nan, 0.5, 0.3, 0.1]), 0.02) == 4  # never below: max_clusters


def separated_codes(seed=0):
    """100 codes in six groups of unequal size (30, 20, 20, 15, 10, 5) far apart in 40 channels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(40)[:6] * 3.0
    return np.repeat(centres, [30, 20, 20, 15, 10, 5], axis=0) + rng.normal(0, 0.3, size=(100, 40))


def test_elbow_of_the_default_metaclustering():
    codes = separated_codes()
    choice = choose_n_clusters(codes, max_clusters=12, method="elbow")
    assert choice.method == "elbow"
    assert choice.n_clusters == 6
    assert choice.cdf == {}
    assert list(choice.criterion.columns) == ["wss", "wss_smoothed", "elbow_residual"]
    assert choice.criterion.index.name == "k"
    np.testing.assert_array_equal(choice.criterion.index, np.arange(1, 13))
    # WSS of average-linkage clusterings, computed one row at a time
    for k in (1, 3, 6, 12):
        labels = np.zeros(100, int) if k == 1 else AgglomerativeClustering(k, linkage="average").fit_predict(codes)
        assert choice.criterion.loc[k, "wss"] == pytest.approx(loop_wss(codes, labels))
    np.testing.assert_array_equal(
        choice.labels, AgglomerativeClustering(6, linkage="average").fit_predict(codes).astype(np.int64)
    )
    assert choice.labels.dtype == np.int64
    # the same as passing flowsom's default explicitly, and the same as R's two steps on the WSS column
    again = choose_n_clusters(codes, default_metaclustering(), max_clusters=12, method="elbow")
    pd.testing.assert_frame_equal(again.criterion, choice.criterion)
    smoothed = _flowsom_smooth(choice.criterion["wss"].to_numpy(), 0.2)
    np.testing.assert_allclose(choice.criterion["wss_smoothed"], smoothed)
    # a distance threshold is cleared: n_clusters is what varies
    threshold = AgglomerativeClustering(n_clusters=None, distance_threshold=1.0, linkage="average")
    pd.testing.assert_frame_equal(
        choose_n_clusters(codes, threshold, max_clusters=12, method="elbow").criterion, choice.criterion
    )


def test_elbow_with_kmeans_is_seeded_by_random_state():
    codes = separated_codes(1)
    a = choose_n_clusters(codes, KMeans(n_init=3), max_clusters=10, method="elbow", random_state=4)
    b = choose_n_clusters(codes, KMeans(n_init=3), max_clusters=10, method="elbow", random_state=4)
    pd.testing.assert_frame_equal(a.criterion, b.criterion)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.n_clusters == 6
    seed = np.random.RandomState(4).randint(np.iinfo(np.int32).max)
    km = KMeans(n_clusters=6, n_init=3, random_state=seed).fit(codes)
    assert a.criterion.loc[6, "wss"] == pytest.approx(km.inertia_)


def test_consensus_cdf_and_delta_area_by_hand():
    # Two pairs 0.1 apart, 5 apart. Every resample drops one of the 4 points (pItem 0.9 -> 3 rows); cut into 2 the
    # close pair always stays together: 2 of the 6 pairs have consensus 1, 4 have 0 -> F(x) = 4/6 below 1, F(1) = 1,
    # area = 0.99 * 4/6 + 0.01. Cut into 3, the 3 rows are apart: all consensus 0, F = 1, area 1.
    codes = np.array([[0.0], [0.1], [5.0], [5.1]])
    model = ConsensusClustering(n_resamples=8, random_state=0)
    choice = choose_n_clusters(codes, model, max_clusters=3, method="delta_area")
    area2 = 0.99 * 4 / 6 + 0.01
    assert choice.method == "delta_area"
    np.testing.assert_allclose(choice.criterion["cdf_area"], [np.nan, area2, 1.0])
    np.testing.assert_allclose(choice.criterion["delta_area"], [np.nan, area2, (1.0 - area2) / area2])
    np.testing.assert_allclose(choice.criterion["pac"], [np.nan, 0.0, 0.0])
    x, cdf = choice.cdf[2]
    np.testing.assert_allclose(x, np.arange(101) / 100)
    np.testing.assert_allclose(cdf, np.r_[np.full(100, 4 / 6), 1.0])
    assert choice.n_clusters == 3  # the area still grows by 49 % at k = 3, the largest k tried
    # pixel weights: the pair (2, 3) weighs 3 * 3 of the 1 + 3 + 3 + 3 + 3 + 9 = 22 -> F below 1 is 12/22
    weighted = choose_n_clusters(codes, model, max_clusters=3, method="delta_area", sample_weight=[1, 1, 3, 3])
    np.testing.assert_allclose(weighted.cdf[2][1][:100], 12 / 22)


def test_consensus_criterion_matches_consensus_clustering_at_every_k():
    codes, _ = make_blobs(n=40, p=3, n_centers=4, spread=0.6, seed=5)
    weight = np.random.default_rng(0).integers(0, 50, size=40).astype(float)
    model = ConsensusClustering(n_resamples=12, random_state=11)
    choice = choose_n_clusters(codes, model, max_clusters=7, method="delta_area", sample_weight=weight)
    for k in range(2, 8):
        reference = ConsensusClustering(n_clusters=k, n_resamples=12, random_state=11).fit(codes).consensus_
        area, cdf = loop_cdf_area(reference, weight)
        assert choice.criterion.loc[k, "cdf_area"] == pytest.approx(area)
        np.testing.assert_allclose(choice.cdf[k][1], cdf)
        assert choice.criterion.loc[k, "pac"] == pytest.approx(cdf[90] - cdf[10])
    area = choice.criterion["cdf_area"].to_numpy()
    np.testing.assert_allclose(choice.criterion["delta_area"].iloc[2:], (area[2:] - area[1:-1]) / area[1:-1])
    reference_labels = ConsensusClustering(n_clusters=choice.n_clusters, n_resamples=12, random_state=11)
    np.testing.assert_array_equal(choice.labels, reference_labels.fit_predict(codes))


def test_consensus_elbow_is_r_flowsom_max_meta():
    # R FlowSOM(maxMeta): consensus clustering, then the elbow of the WSS of its classes at every k.
    codes = separated_codes(2)[::2]
    choice = choose_n_clusters(
        codes, ConsensusClustering(n_resamples=10, random_state=3), max_clusters=9, method="elbow"
    )
    assert choice.method == "elbow"
    for k in (2, 5, 9):
        labels = ConsensusClustering(n_clusters=k, n_resamples=10, random_state=3).fit_predict(codes)
        assert choice.criterion.loc[k, "wss"] == pytest.approx(loop_wss(codes, labels))
    assert choice.n_clusters == 6
    assert set(choice.criterion.columns) == {"cdf_area", "delta_area", "pac", "wss", "wss_smoothed", "elbow_residual"}


def test_random_state_seeds_the_metaclustering_and_leaves_the_global_rng_alone():
    codes = separated_codes(3)[::2]
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    a = choose_n_clusters(codes, ConsensusClustering(n_resamples=10), max_clusters=8, random_state=5)
    b = choose_n_clusters(codes, ConsensusClustering(n_resamples=10), max_clusters=8, random_state=5)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    pd.testing.assert_frame_equal(a.criterion, b.criterion)
    np.testing.assert_array_equal(a.labels, b.labels)
    for k in a.cdf:
        np.testing.assert_array_equal(a.cdf[k][1], b.cdf[k][1])
    # the seed drawn from random_state, as PixelFlowSOM seeds its metaclustering
    seed = np.random.RandomState(5).randint(np.iinfo(np.int32).max)
    c = choose_n_clusters(codes, ConsensusClustering(n_resamples=10, random_state=seed), max_clusters=8)
    pd.testing.assert_frame_equal(a.criterion, c.criterion)


def test_all_weights_one_is_unweighted_and_inputs_are_untouched():
    codes = separated_codes(4)[::2]
    frozen = codes.copy()
    frozen.setflags(write=False)
    weight = np.ones(50)
    for model in (None, ConsensusClustering(n_resamples=5, random_state=0)):
        a = choose_n_clusters(frozen, model, max_clusters=8)
        b = choose_n_clusters(frozen.tolist(), model, max_clusters=8, sample_weight=weight)
        pd.testing.assert_frame_equal(a.criterion, b.criterion)
    np.testing.assert_array_equal(frozen, codes)
    np.testing.assert_array_equal(weight, 1.0)


@pytest.mark.parametrize("max_clusters", [2, 3, 20])
def test_small_and_full_ranges(max_clusters):
    codes = separated_codes(5)[::5]  # 20 codes
    for model in (None, ConsensusClustering(n_resamples=5, random_state=0)):
        choice = choose_n_clusters(codes, model, max_clusters=max_clusters)
        assert len(choice.criterion) == max_clusters
        assert 2 <= choice.n_clusters <= max_clusters
        assert len(np.unique(choice.labels)) == choice.n_clusters
    assert choose_n_clusters(codes, max_clusters=2).n_clusters == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_clusters": 1}, ValueError, r"max_clusters=1 must be an integer from 2 to the number of codes \(10\)"),
        ({"max_clusters": 11}, ValueError, r"max_clusters=11 must be an integer from 2"),
        ({"max_clusters": 2.5}, ValueError, r"max_clusters=2.5 must be an integer"),
        ({"max_clusters": True}, ValueError, r"max_clusters=True must be an integer"),
        ({"max_clusters": "5"}, ValueError, r"max_clusters='5' must be an integer"),
        ({"max_clusters": 5, "method": "gap"}, ValueError, r"method='gap' must be 'auto', 'knee', 'elbow' or 'delta"),
        ({"max_clusters": 5, "n_resamples": -1}, ValueError, r"n_resamples=-1 must be a non-negative integer"),
        ({"max_clusters": 5, "n_resamples": 2.0}, ValueError, r"n_resamples=2.0 must be a non-negative integer"),
        ({"max_clusters": 5, "method": "delta_area"}, ValueError, r"needs a ConsensusClustering.*AgglomerativeCl"),
        ({"max_clusters": 5, "metaclustering": DBSCAN()}, TypeError, r"DBSCAN\(\) has no n_clusters parameter"),
        ({"max_clusters": 5, "metaclustering": KMeans}, TypeError, r"must be None, a ConsensusClustering or"),
        ({"max_clusters": 5, "metaclustering": "average"}, TypeError, r"must be None, a ConsensusClustering or"),
        ({"max_clusters": 5, "sample_weight": np.ones(9)}, ValueError, r"10 finite non-negative.*shape \(9,\)"),
        ({"max_clusters": 5, "sample_weight": -np.ones(10)}, ValueError, r"sample_weight must be 10 finite"),
        ({"max_clusters": 5, "sample_weight": np.r_[np.nan, np.ones(9)]}, ValueError, r"must be 10 finite"),
        ({"max_clusters": 5, "sample_weight": np.r_[1.0, np.zeros(9)]}, ValueError, r"at least two of them positive"),
        (
            {"max_clusters": 5, "metaclustering": ConsensusClustering(resample_fraction=1.5)},
            ValueError,
            r"'resample_fraction' parameter of ConsensusClustering must be",
        ),
    ],
)
def test_choose_n_clusters_errors(kwargs, error, match):
    codes = separated_codes(6)[::10]
    kwargs = {"metaclustering": None, **kwargs}
    with pytest.raises(error, match=match):
        choose_n_clusters(codes, kwargs.pop("metaclustering"), **kwargs)


@pytest.mark.parametrize(
    ("codes", "match"),
    [(np.array([[0.0, np.nan], [1.0, 1.0]]), "codes contains NaN"), (np.zeros((1, 3)), "minimum of 2 is required")],
)
def test_choose_n_clusters_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        choose_n_clusters(codes, max_clusters=2)


def test_cost_is_on_the_nodes_only():
    # 100 codes x 40 channels, max_clusters 20: the knee with 20 resamples of stability ~10 ms (a fit of 100k pixels
    # takes ~0.5 s), the elbow too, the consensus delta area ~170 ms. Generous bounds: the test machine is shared.
    codes = np.random.default_rng(0).normal(size=(100, 40))
    weight = np.random.default_rng(1).integers(0, 300, size=100)
    for model, method, bound in (
        (None, "knee", 0.5),
        (None, "elbow", 0.5),
        (ConsensusClustering(random_state=0), "delta_area", 2.0),
    ):
        choose_n_clusters(codes, model, max_clusters=20, method=method, sample_weight=weight)  # warm (imports)
        start = time.perf_counter()
        choose_n_clusters(codes, model, max_clusters=20, method=method, sample_weight=weight)
        assert time.perf_counter() - start < bound


# ---------------------------------------------------------------------------------------------- synthetic images


@pytest.fixture(scope="module")
def synthetic_codes():
    """SOM codes of seeded synthetic images with 4, 6 and 8 phenotypes, and the pixels of every node.

    The node counts come from a brute-force float64 nearest-code search, independent of the estimator's kernels.
    """
    from pixelflowsom import PixelFlowSOM
    from pixelflowsom._synthetic import make_synthetic_image

    out = {}
    for n_phenotypes in (4, 6, 8):
        for seed in range(5):
            image, _ = make_synthetic_image((128, 128), n_channels=12, n_phenotypes=n_phenotypes, seed=seed)
            model = PixelFlowSOM(n_clusters=2, xdim=10, ydim=10, fraction=0.5, som="batch", random_state=seed)
            codes = model.fit(image).codes_
            pixels = image.values.reshape(12, -1).T.astype(np.float64)
            nearest = ((pixels[:, None, :] - codes[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
            out[n_phenotypes, seed] = codes, np.bincount(nearest, minlength=100)
    return out


def chosen(synthetic_codes, model, weighted, method):
    return {
        key: choose_n_clusters(
            codes,
            model,
            max_clusters=20,
            method=method,
            sample_weight=counts if weighted else None,
            random_state=key[1],
            n_resamples=0,
        ).n_clusters
        for key, (codes, counts) in synthetic_codes.items()
    }


def test_synthetic_elbow(synthetic_codes):
    # Measured (128 x 128, 12 channels, fraction 0.5, 10 x 10 batch SOM), chosen k for seeds 0..4:
    #   R's rule, unweighted: 4 -> [4, 3, 4, 3, 4]; 6 -> [6, 6, 4, 6, 6]; 8 -> [6, 7, 7, 8, 7]   (8 / 15 exact)
    #   pixel-weighted:       4 -> [4, 4, 4, 4, 4]; 6 -> [6, 6, 6, 6, 6]; 8 -> [6, 7, 7, 8, 8]   (12 / 15 exact)
    # Why: 12 to 34 of the 100 nodes get no pixel (the SOM puts them between well separated phenotypes); unweighted,
    # they make up small clusters of their own. And R's two-line fit with absolute residuals leans to small k when the
    # curve falls steeply and convexly for long, as with 8 phenotypes: it under-calls by one or two (never over).
    # For seeds 0 and 1 of 8 phenotypes, average linkage needs k = 9 to separate the phenotypes at all.
    unweighted = chosen(synthetic_codes, None, weighted=False, method="elbow")
    weighted = chosen(synthetic_codes, None, weighted=True, method="elbow")
    exact_u = sum(k == key[0] for key, k in unweighted.items())
    exact_w = sum(k == key[0] for key, k in weighted.items())
    assert all(weighted[n, seed] == n for n in (4, 6) for seed in range(5))
    assert all(6 <= weighted[8, seed] <= 8 for seed in range(5))
    assert exact_w >= 12
    assert exact_w > exact_u >= 6


def test_synthetic_consensus_delta_area(synthetic_codes):
    # Measured as above with ConsensusClustering(n_resamples=100), chosen k for seeds 0..4:
    #   unweighted:     4 -> [7, 10, 6, 4, 4]; 6 -> [6, 6, 6, 6, 6]; 8 -> [7, 7, 8, 8, 8]   (10 / 15 exact)
    #   pixel-weighted: 4 -> [4, 7, 4, 4, 4];  6 -> [6, 6, 6, 6, 6]; 8 -> [7, 7, 8, 8, 8]   (12 / 15 exact)
    # Misses: seed 1 of 4 phenotypes goes on to split three phenotypes in two (thousands of pixels each, brighter and
    # dimmer cells), stably, each adding more than 2 % of the area (3.2, 2.8, 5.1 % at k = 5, 6, 7); for 8
    # phenotypes, see the elbow test (seeds 0 and 1 need k = 9 to separate the phenotypes).
    model = ConsensusClustering(n_resamples=100)
    unweighted = chosen(synthetic_codes, model, weighted=False, method="delta_area")
    weighted = chosen(synthetic_codes, model, weighted=True, method="delta_area")
    exact_u = sum(k == key[0] for key, k in unweighted.items())
    exact_w = sum(k == key[0] for key, k in weighted.items())
    assert all(weighted[6, seed] == 6 for seed in range(5))
    assert sum(weighted[4, seed] == 4 for seed in range(5)) >= 4
    assert all(abs(weighted[8, seed] - 8) <= 1 for seed in range(5))
    assert exact_w >= 12
    assert exact_w > exact_u >= 8


def test_synthetic_knee(synthetic_codes):
    # Measured as above (the fixture's 15 images), chosen k for seeds 0..4, pixel-weighted (as PixelFlowSOM runs it):
    #   knee: 4 -> [4, 4, 4, 4, 4]; 6 -> [6, 6, 6, 6, 6]; 8 -> [9, 9, 8, 8, 8]   (13 / 15 exact)
    # The two "misses" are seeds 0 and 1 of 8 phenotypes, where average linkage needs k = 9 to separate the phenotypes
    # at all (see test_synthetic_elbow): the knee chooses the k that recovers them. Unweighted, the knee is misled by
    # the empty nodes (4 -> [7, 6, 6, 5, 4]): the weights are what makes it work.
    weighted = chosen(synthetic_codes, None, weighted=True, method="knee")
    assert all(weighted[n, seed] == n for n in (4, 6) for seed in range(5))
    assert [weighted[8, seed] for seed in range(5)] == [9, 9, 8, 8, 8]
    assert weighted == chosen(synthetic_codes, None, weighted=True, method="auto")
    # better than the elbow on the same codes (12 / 15)
    elbow = chosen(synthetic_codes, None, weighted=True, method="elbow")
    assert sum(k == key[0] for key, k in weighted.items()) > sum(k == key[0] for key, k in elbow.items())


# ---------------------------------------------------------------------------------------------- the knee


def knee_reference(wss):
    """Kneedle on log(wss), written out: the first k in 2 .. K - 1 farthest below the chord of the scaled curve."""
    wss = np.asarray(wss, dtype=float)
    y = np.log(wss + 1e-9 * wss[0])
    x = (np.arange(1, len(y) + 1) - 1) / (len(y) - 1)
    scaled = (y - y[-1]) / (y[0] - y[-1])
    distance = (1 - x) - scaled
    best = max(range(1, len(y) - 1), key=lambda i: (distance[i], -i))
    return best + 1, y, distance


@pytest.mark.parametrize("corner", [2, 4, 7])
def test_knee_of_a_curve_falling_steeply_then_slowly_is_its_corner(corner):
    k = np.arange(1, 13)
    log_wss = np.where(k <= corner, 10.0 - 2.0 * (k - 1), 10.0 - 2.0 * (corner - 1) - 0.1 * (k - corner))
    chosen, columns = _knee(np.exp(log_wss))
    assert chosen == corner
    expected_k, y, distance = knee_reference(np.exp(log_wss))
    assert expected_k == corner
    np.testing.assert_allclose(columns["log_wss"], y)
    np.testing.assert_allclose(columns["knee_distance"], distance, atol=1e-12)
    assert columns["knee_distance"][0] == 0.0
    assert columns["knee_distance"][-1] == 0.0


def test_knee_edge_cases():
    # two or three values: the only inner k (2)
    assert _knee([5.0, 1.0])[0] == 2
    assert _knee([5.0, 1.0, 0.5])[0] == 2
    # a flat or rising curve has no knee: distance 0 everywhere, k = 2
    k, columns = _knee([3.0, 3.0, 3.0, 3.0])
    assert k == 2
    np.testing.assert_array_equal(columns["knee_distance"], 0.0)
    assert _knee([0.0, 0.0, 0.0])[0] == 2
    # a partition without scatter left (WSS 0 from k = 4 on) is a deep knee: the floor keeps the logarithm finite
    k, columns = _knee([100.0, 60.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert k == 4
    assert np.all(np.isfinite(columns["log_wss"]))


def test_tree_wss_equals_the_wss_of_every_cut():
    rng = np.random.default_rng(3)
    codes = rng.normal(size=(40, 4)) + np.repeat(np.eye(4)[:, :4] * 3, 10, axis=0)
    weight = rng.integers(0, 20, size=40).astype(float)
    weight[:5] = 0  # nodes without pixels
    for linkage in ("average", "ward", "complete", "single"):
        children = AgglomerativeClustering(n_clusters=2, linkage=linkage, compute_full_tree=True).fit(codes).children_
        wss = _tree_wss(children, codes, weight, 12)
        for k in range(1, 13):
            labels = np.zeros(40, int) if k == 1 else AgglomerativeClustering(k, linkage=linkage).fit_predict(codes)
            assert wss[k - 1] == pytest.approx(loop_wss(codes, labels, weight), rel=1e-10, abs=1e-10)
    # every code its own cluster: no scatter
    children = AgglomerativeClustering(n_clusters=2, compute_full_tree=True).fit(codes).children_
    assert _tree_wss(children, codes, weight, 40)[-1] == pytest.approx(0.0, abs=1e-20)


def test_knee_of_the_default_metaclustering():
    codes = separated_codes()
    weight = np.random.default_rng(0).integers(1, 200, size=100)
    choice = choose_n_clusters(codes, max_clusters=12, sample_weight=weight)
    assert choice.method == "knee"
    assert choice.n_clusters == 6
    assert list(choice.criterion.columns) == ["wss", "log_wss", "knee_distance"]
    np.testing.assert_array_equal(choice.criterion.index, np.arange(1, 13))
    for k in (1, 3, 6, 12):
        labels = np.zeros(100, int) if k == 1 else AgglomerativeClustering(k, linkage="average").fit_predict(codes)
        assert choice.criterion.loc[k, "wss"] == pytest.approx(loop_wss(codes, labels, weight), rel=1e-10)
    k, y, distance = knee_reference(choice.criterion["wss"])
    assert k == 6
    np.testing.assert_allclose(choice.criterion["log_wss"], y)
    np.testing.assert_allclose(choice.criterion["knee_distance"], distance, atol=1e-12)
    np.testing.assert_array_equal(
        choice.labels, AgglomerativeClustering(6, linkage="average").fit_predict(codes).astype(np.int64)
    )
    assert choice.cdf == {}
    # the default metaclustering passed explicitly and method="knee" by name are the same
    again = choose_n_clusters(codes, default_metaclustering(), max_clusters=12, method="knee", sample_weight=weight)
    pd.testing.assert_frame_equal(again.criterion, choice.criterion)
    pd.testing.assert_series_equal(again.stability, choice.stability)


def test_knee_uses_the_pixel_weights():
    # Three groups of codes plus a fourth group of six nodes that no pixel maps to (between the groups, as the SOM
    # leaves them): unweighted, the empty nodes make a cluster of their own; weighted, they count for nothing.
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    codes = np.repeat(centres, [20, 20, 20, 6], axis=0) + rng.normal(0, 0.2, size=(66, 2))
    weight = np.r_[np.full(60, 50.0), np.zeros(6)]
    assert choose_n_clusters(codes, max_clusters=10).n_clusters == 4
    weighted = choose_n_clusters(codes, max_clusters=10, sample_weight=weight)
    assert weighted.n_clusters == 3
    assert np.bincount(weighted.labels[:60]).tolist() == [20, 20, 20]


def test_knee_with_other_metaclusterings():
    codes = separated_codes(1)
    km = choose_n_clusters(codes, KMeans(n_init=3), max_clusters=10, random_state=4)
    assert (km.method, km.n_clusters) == ("knee", 6)
    seed = np.random.RandomState(4).randint(np.iinfo(np.int32).max)
    assert km.criterion.loc[6, "wss"] == pytest.approx(
        KMeans(n_clusters=6, n_init=3, random_state=seed).fit(codes).inertia_
    )
    assert km.stability is None  # re-clustering resamples would cost n_resamples * max_clusters fits
    consensus = choose_n_clusters(
        codes[::2], ConsensusClustering(n_resamples=10, random_state=3), max_clusters=9, sample_weight=np.ones(50)
    )
    assert consensus.method == "knee"
    assert consensus.n_clusters == 6
    assert set(consensus.criterion.columns) == {"cdf_area", "delta_area", "pac", "wss", "log_wss", "knee_distance"}
    for k in (2, 6, 9):
        labels = ConsensusClustering(n_clusters=k, n_resamples=10, random_state=3).fit_predict(codes[::2])
        assert consensus.criterion.loc[k, "wss"] == pytest.approx(loop_wss(codes[::2], labels))
    assert consensus.stability is None
    assert len(consensus.cdf) == 8


# ---------------------------------------------------------------------------------------------- stability


def stability_reference(codes, weight, max_clusters, n_resamples, seed, rule):
    """Resample 90 % of the codes, cluster with sklearn at every k, apply the rule to the loop WSS, count."""
    rs = np.random.RandomState(seed)
    n = len(codes)
    size = max(max_clusters, int(0.9 * n))
    counts = np.zeros(max_clusters + 1)
    for _ in range(n_resamples):
        idx = np.sort(rs.permutation(n)[:size])
        sub, w = codes[idx], weight[idx]
        wss = [loop_wss(sub, np.zeros(size, int), w)] + [
            loop_wss(sub, AgglomerativeClustering(k, linkage="average").fit_predict(sub), w)
            for k in range(2, max_clusters + 1)
        ]
        counts[rule(np.array(wss))] += 1
    return counts[1:] / n_resamples


def test_stability_matches_a_reference():
    codes = separated_codes(7)[::2] + np.random.default_rng(2).normal(0, 0.6, size=(50, 40))
    weight = np.random.default_rng(3).integers(0, 40, size=50).astype(float)
    knee = choose_n_clusters(codes, max_clusters=10, sample_weight=weight, n_resamples=12, random_state=3)
    expected = stability_reference(codes, weight, 10, 12, 3, lambda wss: knee_reference(wss)[0])
    assert knee.stability.name == "stability"
    assert knee.stability.index.name == "k"
    np.testing.assert_array_equal(knee.stability.index, np.arange(1, 11))
    np.testing.assert_allclose(knee.stability.to_numpy(), expected)
    assert knee.stability.sum() == pytest.approx(1.0)

    def elbow_rule(wss):
        return _first_minimum(_two_line_residuals(_flowsom_smooth(wss, 0.2)))

    elbow = choose_n_clusters(
        codes, max_clusters=10, method="elbow", sample_weight=weight, n_resamples=12, random_state=3
    )
    np.testing.assert_allclose(elbow.stability.to_numpy(), stability_reference(codes, weight, 10, 12, 3, elbow_rule))


def test_stability_is_seeded_and_absent_when_not_computed():
    codes = separated_codes(8)[::2]
    a = choose_n_clusters(codes, max_clusters=8)
    b = choose_n_clusters(codes, max_clusters=8, random_state=0)  # None draws the resamples with seed 0
    pd.testing.assert_series_equal(a.stability, b.stability)
    assert a.stability[a.n_clusters] >= 0.9  # six well separated groups: (nearly) every resample agrees
    assert choose_n_clusters(codes, max_clusters=8, n_resamples=0).stability is None
    assert choose_n_clusters(codes, KMeans(n_init=2), max_clusters=8).stability is None
    consensus = ConsensusClustering(n_resamples=5, random_state=0)
    assert choose_n_clusters(codes, consensus, max_clusters=8, method="delta_area").stability is None
    connected = AgglomerativeClustering(linkage="average", connectivity=np.ones((50, 50)))
    assert choose_n_clusters(codes, connected, max_clusters=8).stability is None
    # all codes in every resample (max_clusters = n_codes): every resample is the data itself
    full = choose_n_clusters(codes[:12], max_clusters=12)
    assert full.stability[full.n_clusters] == 1.0
