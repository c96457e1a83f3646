import numpy as np
import pytest

from pixelflowsom._synthetic import make_synthetic_image


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
