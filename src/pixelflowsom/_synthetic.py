"""Seeded synthetic multiplexed tissue images with known pixel phenotypes (for the demo, tests and benchmarks).

:func:`make_synthetic_image` makes one image; :func:`synthetic_family` lists the parameters of a seeded family of them
that varies what makes choosing the number of metaclusters hard (``benchmarks/bench_k.py`` runs it).
"""

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
    proportions=None,
    lineages=None,
):
    """Make a multiplexed image of cells, each of one phenotype, with its ground truth.

    The tissue is a Voronoi tessellation of randomly placed cell centres; every cell gets one of
    ``n_phenotypes`` phenotypes (phenotype 0 is the dim background "stroma"), uniformly at random or with the given
    ``proportions``. Every other phenotype expresses a few markers of its own brightly (as long as there are enough
    channels; two random ones after that) and the rest dimly, plus, with ``lineages``, the marker of its lineage;
    each cell scales its profile by its own brightness, and every pixel gets multiplicative and additive noise.

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
    proportions : array-like of shape (n_phenotypes,) or None, default=None
        Relative frequency of every phenotype among the cells (normalised to sum to 1), e.g. 0.015 for a rare one;
        every phenotype still gets at least one cell. ``None``: all equally likely (the images made before this
        parameter existed, unchanged).
    lineages : int or None, default=None
        Group the phenotypes ``1 ..`` into this many lineages (phenotype ``p`` in lineage ``(p - 1) % lineages``),
        each with one marker that all its phenotypes express brightly at the same level, as lineage markers do in
        tissue: a hierarchy in which lineages are far apart and the phenotypes of one lineage closer. The lineage
        markers are the first channels of the seeded permutation; the private markers come from the others. From 1
        to ``min(n_phenotypes - 1, n_channels - 1)``; ``None``: no lineage markers.

    Returns
    -------
    image : xarray.DataArray
        Dims ``("c", "y", "x")`` (or ``("c", "z", "y", "x")``), numpy-backed, non-negative, with channel names as
        the ``c`` coordinate.
    phenotype : numpy.ndarray
        The spatial-shaped int array of true phenotypes ``0..n_phenotypes-1``.

    Raises
    ------
    ValueError
        If ``shape`` is not two or three positive sizes, ``n_phenotypes`` or ``n_channels`` is below 2,
        ``proportions`` is not ``n_phenotypes`` finite non-negative numbers, not all zero, or ``lineages`` is out of
        range.
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
    if proportions is not None:
        proportions = np.asarray(proportions, dtype=np.float64)
        if proportions.shape != (n_phenotypes,) or not np.all(np.isfinite(proportions)) or np.any(proportions < 0):
            raise ValueError(
                f"proportions must be {n_phenotypes} finite non-negative numbers, one per phenotype; got shape "
                f"{proportions.shape}."
            )
        if proportions.sum() <= 0:
            raise ValueError("proportions must not all be zero.")
        proportions = proportions / proportions.sum()
    n_lineages = 0 if lineages is None else int(lineages)
    if lineages is not None and not 1 <= n_lineages <= min(n_phenotypes - 1, n_channels - 1):
        raise ValueError(
            f"lineages={lineages!r} must be from 1 to min(n_phenotypes - 1, n_channels - 1) = "
            f"{min(n_phenotypes - 1, n_channels - 1)}."
        )
    # Phenotypes get private markers while there are enough channels (two or three each), random ones after that.
    profiles = np.full((n_phenotypes, n_channels), 0.1)
    order = profile_rng.permutation(n_channels)
    if n_lineages:
        # The first channels of the permutation are lineage markers: phenotype ph belongs to lineage (ph - 1) % L.
        lineage_level = profile_rng.uniform(1.0, 2.0, size=n_lineages)
        for ph in range(1, n_phenotypes):
            profiles[ph, order[(ph - 1) % n_lineages]] = lineage_level[(ph - 1) % n_lineages]
        order = order[n_lineages:]
    free = len(order)
    per = int(np.clip(free // (n_phenotypes - 1), 1, 3))
    for ph in range(1, n_phenotypes):
        markers = order[(ph - 1) * per : ph * per]
        if len(markers) < per:
            # Two random markers (of all channels, or of the non-lineage ones with lineages).
            pool = order if n_lineages else n_channels
            markers = profile_rng.choice(pool, size=min(free, 2), replace=False)
        profiles[ph, markers] = profile_rng.uniform(1.0, 2.0, size=len(markers))
    n_pixels = int(np.prod(shape))
    n_cells = max(n_phenotypes, int(n_pixels / cell_size ** len(shape) * 1.5))
    centres = rng.uniform(0, 1, size=(n_cells, len(shape))) * np.array(shape)
    if proportions is None:
        cell_phenotype = rng.integers(0, n_phenotypes, n_cells)
    else:
        cell_phenotype = rng.choice(n_phenotypes, size=n_cells, p=proportions)
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


#: Levels of every factor of :func:`synthetic_family` (public: the benchmark prints them).
FAMILY_LEVELS = {
    "n_phenotypes": (3, 4, 5, 6, 7, 8, 9, 10, 11, 12),
    "n_channels": (8, 12, 16, 24, 32, 40),
    "noise": (0.1, 0.2, 0.3, 0.4),
    "sizes": ("equal", "unequal", "rare"),
    "lineages": (False, True),
}


def _family_proportions(sizes, n_phenotypes, rng):
    """Cell proportions of the phenotypes for a ``sizes`` level of :func:`synthetic_family` (None for equal)."""
    if sizes == "equal":
        return None
    if sizes == "unequal":  # Zipf-like: the i-th largest phenotype has 1 / i of the largest's cells, shuffled
        return rng.permutation(1.0 / np.arange(1, n_phenotypes + 1))
    # rare: one (two with more than five phenotypes) non-background phenotypes get 1.5 % of the cells, the rest equal
    n_rare = 1 if n_phenotypes <= 5 else 2
    rare = rng.choice(np.arange(1, n_phenotypes), size=n_rare, replace=False)
    proportions = np.full(n_phenotypes, (1.0 - 0.015 * n_rare) / (n_phenotypes - n_rare))
    proportions[rare] = 0.015
    return proportions


def synthetic_family(n_cases=40, *, shape=(256, 256), seed=0):
    """Parameters of a seeded family of synthetic images that vary what makes choosing ``k`` hard.

    Every factor of :data:`FAMILY_LEVELS` is tiled over the cases and shuffled on its own (a balanced random design:
    with 40 cases every number of phenotypes occurs 4 times, every noise level 10 times, ...):

    * ``n_phenotypes``, 3 to 12 (the background counts as one);
    * ``n_channels``, 8 to 40 (with fewer channels than phenotypes, the phenotypes left without a private marker get
      two random ones, which may be other phenotypes' markers);
    * ``noise``, 0.1 to 0.4 (``make_synthetic_image``'s relative noise);
    * ``sizes``: ``"equal"`` proportions of cells, ``"unequal"`` (Zipf: proportional to ``1 / rank``) or ``"rare"``
      (one phenotype, two with more than five, at 1.5 % of the cells, the rest equal);
    * ``lineages``: whether the phenotypes also share lineage markers (``max(1, (n_phenotypes - 1) // 3)``
      lineages, a hierarchy as in tissue: the lineages are far apart and their phenotypes closer).

    Parameters
    ----------
    n_cases : int, default=40
        Number of cases.
    shape : tuple of int, default=(256, 256)
        Spatial shape of every image.
    seed : int, default=0
        Seed of the design and of the cases: case ``i`` uses ``seed=seed + i`` for its image.

    Returns
    -------
    cases : list of dict
        One dict per case: ``"name"`` (e.g. ``"07: 9 phenotypes, 24 channels, noise 0.3, rare, lineages"``),
        ``"n_phenotypes"``, ``"sizes"``, ``"lineages"`` (bool) and ``"params"``, the keyword arguments of
        :func:`make_synthetic_image` (``shape``, ``n_channels``, ``n_phenotypes``, ``noise``, ``seed``,
        ``proportions``, ``lineages``).

    Raises
    ------
    ValueError
        If ``n_cases`` is below 1.

    Examples
    --------
    >>> from pixelflowsom._synthetic import make_synthetic_image, synthetic_family
    >>> case = synthetic_family(4, shape=(64, 64))[0]
    >>> image, truth = make_synthetic_image(**case["params"])
    >>> int(truth.max()) + 1 == case["n_phenotypes"]
    True
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases={n_cases!r} must be a positive integer.")
    n_cases = int(n_cases)
    rng = np.random.default_rng(seed)
    design = {
        name: rng.permutation(np.resize(np.arange(len(levels)), n_cases)) for name, levels in FAMILY_LEVELS.items()
    }
    cases = []
    for i in range(n_cases):
        level = {name: FAMILY_LEVELS[name][design[name][i]] for name in FAMILY_LEVELS}
        n_phenotypes, sizes, hierarchy = int(level["n_phenotypes"]), str(level["sizes"]), bool(level["lineages"])
        case_rng = np.random.default_rng([seed, i])
        proportions = _family_proportions(sizes, n_phenotypes, case_rng)
        params = {
            "shape": tuple(shape),
            "n_channels": int(level["n_channels"]),
            "n_phenotypes": n_phenotypes,
            "noise": float(level["noise"]),
            "seed": seed + i,
            "proportions": proportions,
            "lineages": max(1, (n_phenotypes - 1) // 3) if hierarchy else None,
        }
        name = (
            f"{i:02d}: {n_phenotypes} phenotypes, {params['n_channels']} channels, noise {params['noise']:g}, {sizes}"
            + (", lineages" if hierarchy else "")
        )
        cases.append(
            {"name": name, "n_phenotypes": n_phenotypes, "sizes": sizes, "lineages": hierarchy, "params": params}
        )
    return cases
