"""The SOM kernels against plain numpy references, and the batch SOM's quality."""

import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import cdist
from sklearn.utils import check_random_state

from pixelflowsom import _som
from pixelflowsom._nearest import nearest_nodes

from .conftest import flush32, make_blobs, muladd32


def reference_online_som(
    data, codes, nhbrdist, rlen, alphas, radii, rs, dtype=np.float32, flush=True, stats=None, fused=None
):
    """FlowSOM's C_SOM, written node by node in plain numpy (R's early stop included), in ``dtype``.

    float64 is R's arithmetic. float32 is the kernel's: data, codes and the learning rate rounded to float32, every
    operation rounded to float32, squared distances summed in channel order, each term added by the kernel's
    multiply-add (:func:`muladd32`: ``d * d + sum`` rounded once where ``fused``, twice otherwise; ``None``: as the
    kernels of this process, :func:`pixelflowsom._simd.fused`), and magnitudes below the smallest normal float32
    flushed to ``+0.0`` (:func:`flush32`) in the data, the initial codes and every updated code (``flush=False``
    leaves them subnormal). ``stats``, a dict, receives ``"subnormal"``: how many updated code values were subnormal
    before the flush.
    """
    data = data.astype(dtype)
    codes = codes.astype(dtype)
    flush = flush and dtype == np.float32
    if flush:
        data, codes = flush32(data), flush32(codes)
    subnormal = 0
    n = data.shape[0]
    niter = rlen * n
    step = (radii[0] - radii[1]) / niter
    threshold = radii[0]
    k = 0
    for _ in range(rlen):
        change = 0.0
        for i in rs.randint(0, n, size=n):
            dist = np.zeros(codes.shape[0], dtype)
            for j in range(codes.shape[1]):
                d = data[i, j] - codes[:, j]
                dist = muladd32(d, d, dist, fused) if dtype == np.float32 else dist + d * d
            nearest = int(np.argmin(dist))
            if threshold < 1.0:
                threshold = 0.5
            alpha = dtype(alphas[0] - (alphas[0] - alphas[1]) * k / niter)
            for cd in range(codes.shape[0]):
                if nhbrdist[cd, nearest] > threshold:
                    continue
                tmp = data[i] - codes[cd]
                change += np.abs(data[i].astype(np.float64) - codes[cd]).sum()
                moved = codes[cd] + tmp * alpha
                subnormal += count_subnormal(moved)
                codes[cd] = flush32(moved) if flush else moved
            threshold -= step
            k += 1
        if change < 1.0:
            break
    if stats is not None:
        stats["subnormal"] = subnormal
    return codes.astype(np.float64)


def assert_online_som_is_the_reference(X, codes0, nh, rlen, alphas, radii, seed, ydim):
    """``online_som`` equals the float32 numpy reference bit for bit (the sign of zero too) on the grid's windows
    (``ydim``) and the generic neighbour loop (``ydim=0``), for C-contiguous data and for channel-major data
    (``PixelSample.values``), with the loops of every vector width (seven vectors of distances at a time, four, and
    the 32-bit argmin: the same results, whichever the machine takes); returns the passes run.
    """
    expected = reference_online_som(X, codes0, nh, rlen, alphas, radii, check_random_state(seed))
    n_iters = set()
    for bits in (512, 256, 128):
        with mock.patch.object(_som._simd, "vector_bits", lambda bits=bits: bits):
            for data in (X, np.ascontiguousarray(X.T).T):
                for ydim_arg in (ydim, 0):
                    got, n_iter = _som.online_som(
                        data, codes0, nh, rlen, alphas, radii, check_random_state(seed), ydim=ydim_arg
                    )
                    np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64), err_msg=f"{bits}")
                    n_iters.add(n_iter)
    (n_iter,) = n_iters
    return n_iter


def count_subnormal(codes):
    """How many of the (float32) ``codes`` are subnormal: non-zero, magnitude below ``2**-126``."""
    codes = np.asarray(codes, dtype=np.float32)
    return int(((codes != 0) & (np.abs(codes) < np.finfo(np.float32).tiny)).sum())


@pytest.mark.parametrize(("xdim", "ydim"), [(3, 4), (5, 5), (1, 6)])
def test_online_som_matches_numpy_reference(xdim, ydim):
    X, _ = make_blobs(n=150, p=4, seed=xdim)
    nh = _som.grid_distances(xdim, ydim)
    (radii, alphas) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)[0]
    codes0 = X[check_random_state(0).choice(len(X), xdim * ydim, replace=False)]
    assert assert_online_som_is_the_reference(X, codes0, nh, 3, alphas, radii, seed=1, ydim=ydim) == 3


def reference_train_online(sample, xdim, ydim, rlen, mst, alpha, rs):
    """``train_som(..., som="online")`` rebuilt from the numpy reference: grid phase, then MST phases."""
    codes = sample[rs.choice(sample.shape[0], size=xdim * ydim, replace=False)]
    nhbrdist = _som.grid_distances(xdim, ydim)
    for phase, (radii, alphas) in enumerate(_som.radius_alpha_schedule(nhbrdist, alpha, mst)):
        if phase > 0:
            nhbrdist = _som.mst_distances(codes)
        codes = reference_online_som(sample, codes, nhbrdist, rlen, alphas, radii, rs)
    return codes


@pytest.mark.parametrize(
    ("xdim", "ydim", "p"),
    [
        (3, 4, 1),  # one channel
        (4, 3, 3),  # p not a multiple of 4
        (3, 3, 5),
        (2, 5, 7),
        (3, 4, 9),
        (4, 4, 13),
        (1, 1, 2),  # a single node
        (1, 9, 3),  # grid 1 x N
        (9, 1, 3),  # grid N x 1
        (2, 80, 3),  # wide grid: narrow windows are updated row by row; 160 nodes: two overlapping groups
        (5, 7, 20),  # 35 nodes: padded to one group of 112
        (10, 10, 20),  # FlowSOM's default grid: 100 nodes, one group of 112
        (12, 12, 3),  # 144 nodes: the second group of 112 overlaps the first (of four vectors: the third)
    ],
)
def test_online_som_matches_numpy_reference_shapes(xdim, ydim, p):
    X, _ = make_blobs(n=max(120, xdim * ydim + 40), p=p, seed=xdim * 100 + ydim + p)
    nh = _som.grid_distances(xdim, ydim)
    (radii, alphas) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)[0]
    codes0 = X[check_random_state(0).choice(len(X), xdim * ydim, replace=False)]
    assert assert_online_som_is_the_reference(X, codes0, nh, 2, alphas, radii, seed=1, ydim=ydim) == 2


@pytest.mark.parametrize(("xdim", "ydim"), [(3, 4), (1, 3), (1, 2), (1, 1)])
def test_online_som_learning_rates_above_one_match_reference(xdim, ydim):
    # Learning rates above 1 overshoot (codes are no longer convex combinations): windows are updated row by row.
    X, _ = make_blobs(n=100, p=5, seed=3)
    nh = _som.grid_distances(xdim, ydim)
    codes0 = X[check_random_state(0).choice(len(X), xdim * ydim, replace=False)]
    assert_online_som_is_the_reference(X, codes0, nh, 2, (1.5, 1.2), (2.0, 0.0), 1, ydim=ydim)


@pytest.mark.parametrize("seed", [0, 1])
def test_train_som_mst_phases_match_numpy_reference(seed):
    X, _ = make_blobs(n=150, p=4, seed=seed)
    got, n_iter = _som.train_som(
        X, 3, 4, rlen=2, mst=2, alpha=(0.05, 0.01), som="online", random_state=check_random_state(seed)
    )
    expected = reference_train_online(X, 3, 4, 2, 2, (0.05, 0.01), check_random_state(seed))
    np.testing.assert_array_equal(got, expected)
    assert n_iter == 4


def mostly_zero_data(xdim, ydim, n=300, p=3, seed=0):
    """Data of exact zeros but for 5 rows, and initial codes in ``[0.1, 1)``: codes pulled to 0 by sample after
    sample decay geometrically into subnormal float32 values (as on preprocessed tissue, mostly exact zeros).
    """
    rng = np.random.default_rng(seed)
    X = np.zeros((n, p))
    X[rng.choice(n, 5, replace=False)] = rng.uniform(0.5, 1.5, size=(5, p))
    return X, rng.uniform(0.1, 1.0, size=(xdim * ydim, p))


@pytest.mark.parametrize(
    ("xdim", "ydim", "radii"),
    [
        (2, 2, (0.5, 0.5)),  # only the winner moves: one vector (ydim=0 too)
        (4, 5, (3.0, 3.0)),  # windows of the whole grid: two vectors at a time; ydim=0: node by node
        (1, 80, (1.5, 1.5)),  # a grid much wider than its windows: row by row; ydim=0: node by node
    ],
)
def test_online_som_flushes_subnormal_codes_like_the_reference(xdim, ydim, radii):
    # Without the flush, codes pulled to 0 sample after sample end subnormal (the reference shows it); the kernel
    # equals the flushing reference bit for bit on every update path, no trained code is subnormal, and the codes
    # differ from the unflushed ones by less than the smallest normal float32.
    X, codes0 = mostly_zero_data(xdim, ydim)
    nh = _som.grid_distances(xdim, ydim)
    alphas = (0.5, 0.3)
    unflushed = reference_online_som(X, codes0, nh, 3, alphas, radii, check_random_state(1), flush=False)
    assert count_subnormal(unflushed) > 0
    assert assert_online_som_is_the_reference(X, codes0, nh, 3, alphas, radii, seed=1, ydim=ydim) == 3
    for ydim_arg in (ydim, 0):
        got, _ = _som.online_som(X, codes0, nh, 3, alphas, radii, check_random_state(1), ydim=ydim_arg)
        assert count_subnormal(got) == 0
        np.testing.assert_array_less(np.abs(got - unflushed), 2.0**-126)


def test_online_som_flushes_subnormal_data_and_initial_codes():
    # float64 values that round to subnormal float32, and float32 subnormals given as they are: the kernel trains on
    # them flushed to 0, as the reference does (a channel of subnormals and zeros: unflushed, its codes would stay
    # subnormal), and leaves the caller's arrays alone.
    X, _ = make_blobs(n=120, p=4, seed=6)
    X[:, 1] = np.where(np.arange(120) % 3, 1e-40, 0.0)
    X[::5, 2] = -3e-39
    codes0 = X[:12].copy()
    codes0[:, 1] = 2e-39
    nh = _som.grid_distances(3, 4)
    args = (nh, 2, (0.05, 0.01), (2.0, 0.0))
    assert count_subnormal(reference_online_som(X, codes0, *args, check_random_state(1), flush=False)) > 0
    assert_online_som_is_the_reference(X, codes0, *args, seed=1, ydim=4)
    expected = reference_online_som(X, codes0, *args, check_random_state(1))
    for X32 in (X.astype(np.float32), np.asfortranarray(X, dtype=np.float32)):
        before = X32.copy()
        got, _ = _som.online_som(X32, codes0, *args, check_random_state(1), ydim=4)
        np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64))
        np.testing.assert_array_equal(X32.view(np.int32), before.view(np.int32))


def test_flush_subnormal_helpers_match_numpy():
    tiny = np.finfo(np.float32).tiny
    smallest = np.float32(2.0**-149)
    edges = [0.0, -0.0, smallest, -smallest, 1e-40, -1e-40, np.nextafter(tiny, np.float32(0)), tiny, -tiny]
    edges += [np.nextafter(tiny, np.float32(1)), 1.0, -3.5, np.inf, -np.inf, np.nan]
    rng = np.random.default_rng(0)
    random = np.ldexp(rng.uniform(-2, 2, 200), rng.integers(-150, -100, 200))  # subnormal and small normal values
    values = np.concatenate([edges, random]).astype(np.float32)
    expected = flush32(values)
    scalar = np.array([_som._flush_subnormal(v) for v in values], np.float32)
    np.testing.assert_array_equal(scalar.view(np.int32), expected.view(np.int32))
    assert _som._has_subnormal(values)
    assert not _som._has_subnormal(expected)
    assert not _som._has_subnormal(np.array([0.0, -0.0, tiny, -tiny, np.inf, np.nan], np.float32))
    flushed = values.copy()
    _som._flush_subnormals(flushed)
    np.testing.assert_array_equal(flushed.view(np.int32), expected.view(np.int32))


def float32_winners_differ(X, codes):
    """How many rows of ``X`` have a float32 nearest code other than the float64 one."""
    d64 = ((X[:, None, :] - codes[None]) ** 2).sum(axis=2)
    X32, c32 = X.astype(np.float32), codes.astype(np.float32)
    d32 = ((X32[:, None, :] - c32[None]) ** 2).sum(axis=2, dtype=np.float32)
    return int((d32.argmin(axis=1) != d64.argmin(axis=1)).sum())


def quantization_error(X, codes):
    """Mean distance of the rows of ``X`` to their nearest code (float64)."""
    return float(nearest_nodes(X, codes, return_distances=True)[1].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_online_som_close_to_r_float64_arithmetic(seed):
    # The same algorithm in R's float64 arithmetic: on ordinary data the float32 rounding moves the codes by a few
    # float32 ulps (no winner changes here), far below what any sample moves them.
    X, _ = make_blobs(n=300, p=6, seed=seed)
    nh = _som.grid_distances(4, 4)
    (radii, alphas) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)[0]
    codes0 = X[check_random_state(seed).choice(len(X), 16, replace=False)]
    got, _ = _som.online_som(X, codes0, nh, 3, alphas, radii, check_random_state(seed), ydim=4)
    r64 = reference_online_som(X, codes0, nh, 3, alphas, radii, check_random_state(seed), dtype=np.float64)
    np.testing.assert_allclose(got, r64, rtol=1e-5, atol=1e-5)


def test_online_som_near_ties_follow_float32_and_are_harmless():
    # Codes and pixels far from the origin that differ in the 7th-8th digit: float32 cannot order them as float64
    # does. The kernel picks the float32 reference's winner every time, and the trained codes quantize the data as
    # well as R's float64 arithmetic does.
    rng = np.random.default_rng(0)
    codes0 = 1e4 + rng.normal(0, 1e-3, size=(12, 6))
    X = 1e4 + rng.normal(0, 1e-3, size=(200, 6))
    assert float32_winners_differ(X, codes0) > 50
    assert_online_som_is_the_reference(X, codes0, _som.grid_distances(3, 4), 2, (0.05, 0.01), (2.0, 0.0), 1, ydim=4)
    got, _ = _som.online_som(X, codes0, _som.grid_distances(3, 4), 2, (0.05, 0.01), (2.0, 0.0), check_random_state(1))
    r64 = reference_online_som(
        X, codes0, _som.grid_distances(3, 4), 2, (0.05, 0.01), (2.0, 0.0), check_random_state(1), dtype=np.float64
    )
    # float32 holds 1e4 to 1e-3 (its ulp there): both errors are that rounding, neither is worse by more.
    assert abs(quantization_error(X, got) - quantization_error(X, r64)) < 2e-3


def test_online_som_near_duplicate_codes():
    # Well separated codes, each with near-copies that differ in the 8th digit (equal in float32).
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 10, size=(4, 5))
    codes0 = np.repeat(centres, 3, axis=0) * (1 + rng.normal(0, 1e-8, size=(12, 5)))
    X = np.repeat(centres, 50, axis=0) + rng.normal(0, 1e-7, size=(200, 5))
    assert_online_som_is_the_reference(X, codes0, _som.grid_distances(3, 4), 2, (0.05, 0.01), (0.5, 0.5), 2, ydim=4)


def unfused_tie_case():
    """A 2 x 2 grid whose first winner is node 0 where the multiply-add is rounded twice, node 1 where it is fused.

    The data are zeros; node 0 is at ``d = (2**-13, 1 + 2**-12)`` from them, node 1 at ``(0, 1 + 2**-12)``. ``d_1**2
    = 1 + 2**-11 + 2**-24`` is halfway between two float32: rounded alone (to even) it is ``1 + 2**-11``, node 1's
    distance, and ``2**-26`` added after it is lost (a tie: node 0 wins, the lowest index); fused with ``2**-26``
    it rounds up, ``1 + 2**-11 + 2**-23``: node 1 wins.
    """
    codes0 = np.array([[-(2.0**-13), -(1 + 2.0**-12)], [0.0, -(1 + 2.0**-12)], [5.0, 5.0], [5.0, -5.0]])
    return np.zeros((20, 2)), codes0, _som.grid_distances(2, 2), 2, (0.5, 0.3), (0.5, 0.5)


_GENERIC_CHILD = """
import sys

import numpy as np
from sklearn.utils import check_random_state

from pixelflowsom import _simd, _som

inputs = np.load(sys.argv[1])
out = {"fused": np.array(_simd.fused())}
for name in ("tie", "blobs"):
    X, codes0, nh = inputs[name + "_X"], inputs[name + "_codes0"], inputs[name + "_nh"]
    rlen, alphas, radii = int(inputs[name + "_rlen"]), tuple(inputs[name + "_alphas"]), tuple(inputs[name + "_radii"])
    for ydim in (int(inputs[name + "_ydim"]), 0):
        codes, _ = _som.online_som(X, codes0, nh, rlen, alphas, radii, check_random_state(1), ydim=ydim)
        out[f"{name}_{ydim}"] = codes
np.savez(sys.argv[2], **out)
"""


def test_online_som_for_a_generic_x86_target_is_the_unfused_reference(tmp_path):
    # numba compiling for a generic x86-64 (no FMA; NUMBA_CPU_NAME=generic shares caches between machines), in a child
    # process with a cache of its own: the probe reports the unfused multiply-add, and the online SOM is the numpy
    # reference whose squared distances are rounded twice (bit for bit), not the fused one (the tie case tells them
    # apart), on both update paths.
    X, _ = make_blobs(n=150, p=20, seed=5)
    nh = _som.grid_distances(5, 7)
    (radii, alphas) = _som.radius_alpha_schedule(nh, (0.05, 0.01), 1)[0]
    cases = {
        "tie": (*unfused_tie_case(), 2),
        "blobs": (X, X[check_random_state(0).choice(len(X), 35, replace=False)], nh, 2, alphas, radii, 7),
    }
    inputs = {}
    for name, (data, codes0, nhbrdist, rlen, case_alphas, case_radii, ydim) in cases.items():
        values = {"X": data, "codes0": codes0, "nh": nhbrdist, "rlen": rlen, "alphas": case_alphas}
        values |= {"radii": case_radii, "ydim": ydim}
        inputs |= {f"{name}_{key}": np.asarray(value) for key, value in values.items()}
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CPU_FEATURES"}
    env |= {"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    script = [sys.executable, "-c", _GENERIC_CHILD, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")]
    subprocess.run(script, env=env, check=True, capture_output=True, text=True)
    got = np.load(tmp_path / "out.npz")
    assert not got["fused"]
    for name, (data, codes0, nhbrdist, rlen, case_alphas, case_radii, ydim) in cases.items():
        args = (data, codes0, nhbrdist, rlen, case_alphas, case_radii)
        unfused = reference_online_som(*args, check_random_state(1), fused=False)
        if name == "tie":
            fused = reference_online_som(*args, check_random_state(1), fused=True)
            assert not np.array_equal(fused, unfused)
        for ydim_arg in (ydim, 0):
            np.testing.assert_array_equal(got[f"{name}_{ydim_arg}"].view(np.int64), unfused.view(np.int64))


def test_online_som_tie_case_follows_the_kernels_multiply_add():
    # In this process (fused or not, as _simd.fused() says): the kernel is the reference of its own path.
    data, codes0, nh, rlen, alphas, radii = unfused_tie_case()
    assert_online_som_is_the_reference(data, codes0, nh, rlen, alphas, radii, seed=1, ydim=2)


@pytest.mark.parametrize("exponent", [-60, -40, 40, 100])
def test_online_som_huge_and_tiny_data_are_scaled_exactly(exponent):
    # Data whose squared float32 distances would overflow or underflow train as if scaled by a power of two (exact).
    X, _ = make_blobs(n=120, p=5, seed=4)
    nh = _som.grid_distances(3, 3)
    codes0 = X[:9]
    scaled, scaled_codes = np.ldexp(X, exponent), np.ldexp(codes0, exponent)
    assert _som.training_exponent(scaled, scaled_codes) != 0

    def train(data, codes, rlen):
        return _som.online_som(data, codes, nh, rlen, (0.05, 0.01), (2.0, 0.0), check_random_state(0), ydim=3)

    got, _ = train(scaled, scaled_codes, 1)
    expected, _ = train(X, codes0, 1)
    np.testing.assert_array_equal(got, np.ldexp(expected, exponent))
    # R's early-stopping test is on the data as given: a pass that moves tiny codes by less than 1 in total stops.
    _, n_iter = train(scaled, scaled_codes, 3)
    assert n_iter == (1 if exponent < 0 else 3)


def test_online_som_exact_ties_go_to_lowest_node():
    # Integer data and codes: distances are exact and ties are real. Nodes 3 and 7 are the same code; a sample
    # equidistant from both must move node 3 (radius below 1: only the winner moves) and leave node 7 alone.
    codes0 = np.full((12, 4), 10.0)
    codes0[3] = codes0[7] = 1.0
    X = np.zeros((1, 4))
    nh = _som.grid_distances(3, 4)
    for ydim_arg in (4, 0):
        got, _ = _som.online_som(X, codes0, nh, 1, (0.5, 0.5), (0.5, 0.5), check_random_state(0), ydim=ydim_arg)
        np.testing.assert_array_equal(got[3], 0.5)
        np.testing.assert_array_equal(np.delete(got, 3, axis=0), np.delete(codes0, 3, axis=0))
    # And over a whole training run on integer data with duplicated codes, the reference's winners every time.
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, size=(300, 4)).astype(float)
    codes0 = rng.integers(0, 3, size=(12, 4)).astype(float)
    codes0[7] = codes0[3]
    codes0[11] = codes0[3]
    assert_online_som_is_the_reference(X, codes0, nh, 2, (0.05, 0.01), (2.0, 0.0), 3, ydim=4)


def pass_arguments(n=50, p=3, n_nodes=12, ydim=4):
    """Valid arguments of ``online_som_pass`` (a 3 x 4 grid), as a dict to break one at a time."""
    kp = _som._GROUP
    data = np.zeros((n, p), np.float32)
    base = np.zeros(kp, np.float32)
    base[n_nodes:] = np.inf
    return {
        "data": data,
        "order": np.arange(n),
        "codes": np.zeros((p, kp), np.float32),
        "base": base,
        "ydim": ydim,
        "neighbours": np.zeros((n_nodes, 0), np.int64),
        "neighbour_dist": np.zeros((n_nodes, 0)),
        "threshold": 1.5,
        "k0": 0,
        "niter": n,
        "alphas": (0.05, 0.01),
        "radii": (1.5, 0.0),
        "change_limit": 1.0,
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"codes": np.zeros((3, 120), np.float32), "base": np.zeros(120, np.float32)}, "do not match"),
        ({"codes": np.zeros((3, 48), np.float32), "base": np.zeros(48, np.float32)}, "do not match"),
        ({"base": np.zeros(16, np.float32)}, "do not match"),
        ({"data": np.zeros((50, 4), np.float32)}, "do not match"),
        ({"neighbours": np.zeros((200, 0), np.int64)}, "do not match"),
        ({"ydim": 5}, "neighbourhood"),
        ({"ydim": 0}, "neighbourhood"),
        ({"order": np.array([0, 50])}, "outside data"),
        ({"order": np.array([-1, 3])}, "outside data"),
    ],
)
def test_online_som_pass_checks_shapes_before_reading(change, match):
    # The kernel's vector loads and its gather do not check bounds: mismatched arrays are refused up front.
    arguments = pass_arguments() | change
    with pytest.raises(ValueError, match=match):
        _som.online_som_pass(**arguments)
    _som.online_som_pass(**pass_arguments())  # the valid arguments run


@pytest.mark.parametrize("ydim", [3, 0])
def test_online_som_does_not_modify_inputs(ydim):
    X, _ = make_blobs(n=50, p=3)
    codes0 = X[:9].copy()
    nh = _som.grid_distances(3, 3)
    before = codes0.copy(), X.copy(), nh.copy()
    _som.online_som(X, codes0, nh, 2, (0.05, 0.01), (2.0, 0.0), check_random_state(0), ydim=ydim)
    for array, copy in zip((codes0, X, nh), before, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_online_som_stops_when_codes_stop_changing():
    # Constant data equal to the codes: nothing changes, R's change test stops after the first pass.
    X = np.ones((20, 3))
    codes, n_iter = _som.online_som(
        X, np.ones((4, 3)), _som.grid_distances(2, 2), 10, (0.05, 0.01), (1.0, 0.0), check_random_state(0), ydim=2
    )
    assert n_iter == 1
    np.testing.assert_array_equal(codes, 1.0)


@pytest.mark.parametrize("stop", [True, False])
def test_online_som_leaves_the_random_state_as_sequential_draws_would(stop):
    # The next pass's samples are drawn ahead, in a thread: after training, the random state must be where drawing
    # one order per pass run leaves it (one pass when the codes stop changing, rlen otherwise).
    X = np.ones((20, 3)) if stop else make_blobs(n=50, p=3)[0]
    rs, expected = check_random_state(3), check_random_state(3)
    rlen = 4
    _, n_iter = _som.online_som(X, X[:4], _som.grid_distances(2, 2), rlen, (0.05, 0.01), (1.0, 0.0), rs, ydim=2)
    assert n_iter == (1 if stop else rlen)
    for _ in range(n_iter):
        expected.randint(0, len(X), size=len(X))
    np.testing.assert_array_equal(rs.randint(0, 2**31, size=5), expected.randint(0, 2**31, size=5))


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
    assert quantization_error(X, batch) <= 1.05 * quantization_error(X, online)


@pytest.mark.parametrize("mst", [1, 2])
def test_hybrid_is_batch_then_winner_only_online_passes(mst):
    """The hybrid SOM, step by step: FlowSOM's initial codes, the batch phases, then the online winner-only passes."""
    X, _ = make_blobs(n=400, p=5, seed=mst)
    X = X.astype(np.float32).astype(np.float64)
    got, n_iter = _som.train_som(
        X, 4, 3, rlen=3, mst=mst, alpha=(0.05, 0.01), som="hybrid", random_state=check_random_state(7)
    )
    rs = check_random_state(7)
    codes = X[rs.choice(len(X), size=12, replace=False)]
    nh = _som.grid_distances(4, 3)
    for phase, (radii, _) in enumerate(_som.radius_alpha_schedule(nh, (0.05, 0.01), mst)):
        if phase > 0:
            nh = _som.mst_distances(codes)
        codes, _ = _som.batch_som(X, codes, nh, 3, radii)
    # Winner-only online updates (the numpy reference of C_SOM) with the learning rate from 2 * 0.01 to 0.01.
    expected = reference_online_som(X, codes, nh, _som.HYBRID_PASSES, (0.02, 0.01), (0.5, 0.0), rs)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert n_iter <= 3 * mst + _som.HYBRID_PASSES


def test_hybrid_quantization_error_at_most_the_online_soms():
    X, _ = make_blobs(n=20_000, p=10, n_centers=8, spread=0.3, seed=5)

    def qe(som):
        codes, _ = _som.train_som(
            X, 10, 10, rlen=10, mst=1, alpha=(0.05, 0.01), som=som, random_state=check_random_state(0)
        )
        return quantization_error(X, codes)

    online, hybrid, batch = qe("online"), qe("hybrid"), qe("batch")
    assert hybrid <= online
    assert hybrid < batch
