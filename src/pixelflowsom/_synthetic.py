"""A seeded synthetic multiplexed tissue image with known pixel phenotypes (for the demo, tests and benchmarks)."""

from __future__ import annotations

import numpy as np


def make_synthetic_image(
    shape=(256, 256),
    n_channels=12,
    n_phenotypes=6,
    *,
    cell_size=12.0,
    noise=0.15,
    dtype=np.float32,
    seed=0,
    layout_seed=None,
):
    """Make a multiplexed image of cells, each of one phenotype, with its ground truth.

    The tissue is a Voronoi tessellation of randomly placed cell centres; every cell gets one of
    ``n_phenotypes`` phenotypes (phenotype 0 is the dim background "stroma"). Every other phenotype expresses a few
    markers of its own brightly (as long as there are enough channels) and the rest dimly; each cell scales its
    profile by its own brightness, and every pixel gets multiplicative and additive noise.

    Parameters
    ----------
    shape : tuple of int, default=(256, 256)
        Spatial shape, ``(y, x)`` or ``(z, y, x)``.
    n_channels : int, default=12
        Number of markers (channels), named ``"marker_00"``, ``"marker_01"``, ...
    n_phenotypes : int, default=6
        Number of phenotypes, including the background.
    cell_size : float, default=12.0
        Typical cell diameter in pixels.
    noise : float, default=0.15
        Relative noise level.
    dtype : numpy dtype, default=numpy.float32
        Data type of the image.
    seed : int, default=0
        Seed of the phenotypes' marker profiles, and of everything else unless ``layout_seed`` is given.
    layout_seed : int or None, default=None
        Seed of the tissue layout and the noise: tiles of one large image share ``seed`` (the same phenotypes) and
        differ in ``layout_seed``.

    Returns
    -------
    image : xarray.DataArray
        Dims ``("c", "y", "x")`` (or ``("c", "z", "y", "x")``), numpy-backed, non-negative, with channel names as
        the ``c`` coordinate.
    phenotype : numpy.ndarray
        The spatial-shaped int array of true phenotypes ``0..n_phenotypes-1``.
    """
    import xarray as xr
    from scipy.spatial import cKDTree

    profile_rng = np.random.default_rng(seed)
    rng = profile_rng if layout_seed is None else np.random.default_rng(layout_seed)
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape={shape} must be two or three positive sizes, (y, x) or (z, y, x).")
    if n_phenotypes < 2 or n_channels < 2:
        raise ValueError(
            f"n_phenotypes={n_phenotypes} and n_channels={n_channels} must both be at least 2 "
            "(a background and one phenotype, two markers)."
        )
    # Phenotypes get private markers while there are enough channels (two or three each), random ones after that.
    profiles = np.full((n_phenotypes, n_channels), 0.1)
    per = int(np.clip(n_channels // (n_phenotypes - 1), 1, 3))
    order = profile_rng.permutation(n_channels)
    for ph in range(1, n_phenotypes):
        markers = order[(ph - 1) * per : ph * per]
        if len(markers) < per:
            markers = profile_rng.choice(n_channels, size=min(n_channels, 2), replace=False)
        profiles[ph, markers] = profile_rng.uniform(1.0, 2.0, size=len(markers))
    n_pixels = int(np.prod(shape))
    n_cells = max(n_phenotypes, int(n_pixels / cell_size ** len(shape) * 1.5))
    centres = rng.uniform(0, 1, size=(n_cells, len(shape))) * np.array(shape)
    cell_phenotype = rng.integers(0, n_phenotypes, n_cells)
    cell_phenotype[:n_phenotypes] = np.arange(n_phenotypes)  # every phenotype occurs
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1).T
    cell = cKDTree(centres).query(grid, workers=-1)[1]

    brightness = rng.lognormal(0.0, 0.1, n_cells)
    values = profiles[cell_phenotype[cell]] * brightness[cell][:, None]
    values *= rng.lognormal(0.0, noise, size=values.shape)
    values += rng.normal(0.0, noise * 0.2, size=values.shape)
    np.clip(values, 0, None, out=values)

    image = np.ascontiguousarray(values.T.reshape((n_channels, *shape)).astype(dtype))
    dims = ("c", "y", "x") if len(shape) == 2 else ("c", "z", "y", "x")
    channels = [f"marker_{i:02d}" for i in range(n_channels)]
    return xr.DataArray(image, dims=dims, coords={"c": channels}), cell_phenotype[cell].reshape(shape)
