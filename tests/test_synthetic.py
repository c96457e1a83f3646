import numpy as np
import pytest

from pixelflowsom._synthetic import FAMILY_LEVELS, make_synthetic_image, synthetic_family


@pytest.mark.parametrize("shape", [(40, 50), (4, 20, 30)])
def test_shapes_dims_and_truth(shape):
    image, truth = make_synthetic_image(shape, n_channels=5, n_phenotypes=3, seed=1)
    assert image.dims == (("c", "y", "x") if len(shape) == 2 else ("c", "z", "y", "x"))
    assert image.shape == (5, *shape)
    assert image.dtype == np.float32
    assert list(image.c.values) == [f"marker_{i:02d}" for i in range(5)]
    assert truth.shape == shape
    assert set(np.unique(truth)) <= {0, 1, 2}
    assert (image.values >= 0).all()


def test_seeded():
    a, ta = make_synthetic_image((30, 30), seed=3)
    b, tb = make_synthetic_image((30, 30), seed=3)
    c, _ = make_synthetic_image((30, 30), seed=4)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(ta, tb)
    assert not np.array_equal(a.values, c.values)


def test_phenotypes_are_distinguishable():
    image, truth = make_synthetic_image((64, 64), n_channels=8, n_phenotypes=4, seed=0)
    pixels = image.values.reshape(8, -1).T
    means = np.array([pixels[truth.ravel() == k].mean(0) for k in range(4)])
    # Every phenotype's mean profile is far from every other's, relative to the noise.
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(4, 1)]
    assert gaps.min() > 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"shape": (5,)}, "shape=.* must be two or three positive sizes"), ({"n_phenotypes": 1}, "n_phenotypes=1")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_image(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "total", "counts"),
    [
        (
            {"shape": (48, 40), "n_channels": 8, "n_phenotypes": 12, "seed": 5},
            5217.716774736076,
            [125, 172, 208, 64, 205, 71, 132, 134, 94, 409, 150, 156],
        ),
        (
            {"shape": (40, 40), "n_channels": 16, "n_phenotypes": 6, "noise": 0.3, "seed": 2, "layout_seed": 9},
            7923.432838279383,
            [432, 271, 295, 27, 298, 277],
        ),
    ],
)
def test_default_images_are_unchanged(kwargs, total, counts):
    # Recorded before proportions= and lineages= existed: without them, every image is what it was.
    image, truth = make_synthetic_image(**kwargs)
    assert float(image.values.astype(np.float64).sum()) == pytest.approx(total, rel=1e-12)
    assert np.bincount(truth.ravel()).tolist() == counts


def test_proportions_make_rare_phenotypes():
    proportions = [0.5, 0.3, 0.185, 0.015]
    _, truth = make_synthetic_image((256, 256), n_channels=8, n_phenotypes=4, seed=1, proportions=proportions)
    share = np.bincount(truth.ravel(), minlength=4) / truth.size
    assert 0.003 < share[3] < 0.04  # the rare phenotype: a handful of cells, about 1.5 % of the pixels
    assert share[0] > share[1] > share[2] > share[3]
    # proportions need not sum to 1
    _, again = make_synthetic_image(
        (256, 256), n_channels=8, n_phenotypes=4, seed=1, proportions=np.multiply(proportions, 4)
    )
    np.testing.assert_array_equal(again, truth)


def test_lineages_share_a_marker():
    image, truth = make_synthetic_image((96, 96), n_channels=12, n_phenotypes=7, seed=0, noise=0.05, lineages=2)
    pixels = image.values.reshape(12, -1).T
    means = np.array([pixels[truth.ravel() == k].mean(0) for k in range(7)])
    bright = means > 0.6
    assert not bright[0].any()  # the background expresses nothing brightly
    # phenotypes 1, 3, 5 share one lineage marker, 2, 4, 6 another
    for members in ((1, 3, 5), (2, 4, 6)):
        shared = np.flatnonzero(bright[list(members)].all(0))
        assert len(shared) == 1
        others = [p for p in range(1, 7) if p not in members]
        assert not bright[others, shared[0]].any()
    # and every phenotype has a profile of its own
    assert len({tuple(row) for row in bright[1:]}) == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"proportions": [1.0, 2.0]}, r"proportions must be 6 finite non-negative numbers, one per phenotype"),
        ({"proportions": [1, 1, 1, 1, 1, -1]}, r"proportions must be 6 finite non-negative"),
        ({"proportions": np.zeros(6)}, r"proportions must not all be zero"),
        ({"lineages": 0}, r"lineages=0 must be from 1 to min\(n_phenotypes - 1, n_channels - 1\) = 5"),
        ({"lineages": 6}, r"lineages=6 must be from 1"),
    ],
)
def test_bad_proportions_and_lineages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_image((20, 20), **kwargs)


def test_synthetic_family_is_a_balanced_seeded_design():
    cases = synthetic_family()
    assert len(cases) == 40
    again = synthetic_family()  # seeded
    for a, b in zip(cases, again, strict=True):
        assert a["name"] == b["name"]
        assert {k: v for k, v in a["params"].items() if k != "proportions"} == {
            k: v for k, v in b["params"].items() if k != "proportions"
        }
        np.testing.assert_array_equal(a["params"]["proportions"], b["params"]["proportions"])
    for name, levels in FAMILY_LEVELS.items():
        values = [c["params"][name] if name in ("n_channels", "noise") else c[name] for c in cases]
        counts = [sum(v == level for v in values) for level in levels]
        assert max(counts) - min(counts) <= 1, name  # every level about equally often
    for i, case in enumerate(cases):
        params = case["params"]
        assert case["name"].startswith(f"{i:02d}: {case['n_phenotypes']} phenotypes, {params['n_channels']} channels")
        assert params["seed"] == i
        assert params["shape"] == (256, 256)
        assert (params["lineages"] is not None) == case["lineages"]
        proportions = params["proportions"]
        if case["sizes"] == "equal":
            assert proportions is None
        elif case["sizes"] == "unequal":  # Zipf: 1, 1/2, 1/3, ... in some order
            np.testing.assert_allclose(np.sort(proportions)[::-1], 1 / np.arange(1, case["n_phenotypes"] + 1))
        else:  # one or two rare phenotypes (never the background) at 1.5 %, the rest equal
            assert proportions.sum() == pytest.approx(1.0)
            rare = np.flatnonzero(proportions == 0.015)
            assert len(rare) == (1 if case["n_phenotypes"] <= 5 else 2)
            assert 0 not in rare
    other = synthetic_family(12, shape=(32, 32), seed=3)
    assert len(other) == 12
    assert other[0]["params"]["seed"] == 3
    for case in other[:3]:
        image, truth = make_synthetic_image(**case["params"])
        assert image.shape == (case["params"]["n_channels"], 32, 32)
        assert truth.max() == case["n_phenotypes"] - 1
    with pytest.raises(ValueError, match="n_cases=0 must be a positive integer"):
        synthetic_family(0)
