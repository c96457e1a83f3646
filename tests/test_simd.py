"""The float32 vector intrinsics against numpy, and the numpy fused multiply-add against exact rationals."""

import os
import subprocess
import sys
from fractions import Fraction

import llvmlite.binding
import numba
import numpy as np
import pytest
from numba import TypingError

from pixelflowsom import _simd

from .conftest import flush32, fma32, muladd32

LANES = _simd.LANES


def exactly_rounded_float32(value: Fraction) -> np.float32:
    """``value`` rounded to the nearest float32, ties to even, decided on exact rationals."""
    guess = np.float32(float(value))  # within one float32 of the answer (rounded twice)
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]

    def key(candidate):
        return abs(Fraction(float(candidate)) - value), int(candidate.view(np.int32)) & 1

    return min(candidates, key=key)


def double_rounding_case():
    """``a * b + c`` whose float64 sum lands exactly halfway between two float32, the exact sum just below it.

    ``a * b = 2**-24 - 2**-70`` and ``c = 1 + 2**-23``: the exact sum rounds down to ``c``, the float64 sum
    ``1 + 3 * 2**-24`` is a tie that rounds to even, up to ``1 + 2**-22``.
    """
    a = np.float32(2.0**-12 * (1 + 2.0**-23))
    b = np.float32(2.0**-12 * (1 - 2.0**-23))
    c = np.float32(1 + 2.0**-23)
    return a, b, c


def random_triples(n, seed):
    rng = np.random.default_rng(seed)
    mantissa = rng.uniform(-2, 2, size=(3, n))
    exponent = rng.integers(-30, 30, size=(3, n))
    return tuple(np.ldexp(mantissa, exponent).astype(np.float32))


def test_fma32_reference_rounds_once():
    a, b, c = (np.concatenate([x, [y]]) for x, y in zip(random_triples(3000, 0), double_rounding_case(), strict=True))
    exact = [
        exactly_rounded_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
        for x, y, z in zip(a, b, c, strict=True)
    ]
    np.testing.assert_array_equal(fma32(a, b, c).view(np.int32), np.array(exact, np.float32).view(np.int32))
    # The crafted case is one where rounding twice is wrong.
    a, b, c = double_rounding_case()
    assert np.float32(float(a) * float(b) + float(c)) != fma32(a, b, c) == c


@numba.njit
def apply_all(x, y, z, low, high, out):
    """Every intrinsic over ``len(x) // LANES`` vectors; results side by side in ``out``."""
    n = x.shape[0]
    for b in range(0, n, LANES):
        vx = _simd.load(x, b)
        vy = _simd.load(y, b)
        vz = _simd.load(z, b)
        _simd.store(out, b, _simd.sub(vx, vy))
        _simd.store(out, n + b, _simd.mul(vx, vy))
        _simd.store(out, 2 * n + b, _simd.add(vx, vy))
        _simd.store(out, 3 * n + b, _simd.muladd(vx, vy, vz))
        _simd.store(out, 4 * n + b, _simd.splat(x[b + 1]))
        _simd.store(out, 5 * n + b, _simd.where_within(vx, low, high, vz))
        _simd.store(out, 6 * n + b, _simd.flush_subnormal(vx))


def test_intrinsics_match_numpy_bit_for_bit():
    x, y, z = random_triples(8 * LANES, 1)
    x[:6] = [0.0, -0.0, np.inf, 1.0, 1e-40, -(2.0**-149)]
    y[:4] = [-0.0, -0.0, 1.0, 1.0]
    x[-1], y[-1], z[-1] = double_rounding_case()
    out = np.full(7 * x.size + LANES, np.nan, np.float32)  # a vector past the end: stores stay inside their range
    low, high = np.float32(-(2.0**10)), np.float32(2.0**10)
    apply_all(x, y, z, low, high, out)
    expected = np.concatenate(
        [
            x - y,
            x * y,
            x + y,
            muladd32(x, y, z),
            np.repeat(x[1::LANES], LANES),
            np.where((low <= x) & (x < high), z, 0),
            flush32(x),
        ]
    )
    np.testing.assert_array_equal(out[: 7 * x.size].view(np.int32), expected.view(np.int32))
    assert np.isnan(out[7 * x.size :]).all()


@numba.njit
def muladd_all(x, y, z, out):
    for b in range(0, x.shape[0], LANES):
        _simd.store(out, b, _simd.muladd(_simd.load(x, b), _simd.load(y, b), _simd.load(z, b)))


def test_muladd_is_fused_exactly_where_the_probe_says():
    # Triples where rounding once and rounding twice differ, and a vector where they agree: muladd is the fused
    # multiply-add in every lane if fused(), the float32 product then the float32 sum in every lane otherwise.
    a, b, c = (np.repeat(v, LANES) for v in double_rounding_case())
    x, y, z = (np.concatenate([u, np.ones(LANES, np.float32)]) for u in (a, b, c))
    out = np.empty_like(x)
    muladd_all(x, y, z, out)
    rounded_twice = x * y + z
    assert (fma32(a, b, c) != rounded_twice[:LANES]).all()
    assert isinstance(_simd.fused(), bool)
    expected = fma32(x, y, z) if _simd.fused() else rounded_twice
    np.testing.assert_array_equal(out.view(np.int32), expected.view(np.int32))
    np.testing.assert_array_equal(muladd32(x, y, z).view(np.int32), expected.view(np.int32))
    np.testing.assert_array_equal(muladd32(x, y, z, fused=False).view(np.int32), rounded_twice.view(np.int32))


def host_has(*features):
    """Whether this machine's processor has all the LLVM ``features`` (e.g. ``"fma"``)."""
    return all(llvmlite.binding.get_host_cpu_features().get(feature, False) for feature in features)


@pytest.mark.parametrize(
    ("cpu", "fused", "bits"),
    [
        ("generic", False, 128),  # x86-64 with SSE2 only
        pytest.param("nehalem", False, 128, marks=pytest.mark.skipif(not host_has("sse4.2"), reason="no SSE 4.2")),
        pytest.param("haswell", True, 256, marks=pytest.mark.skipif(not host_has("avx2", "fma"), reason="no AVX2/FMA")),
        pytest.param(  # AVX-512 F, BW, CD, DQ and VL, which every AVX-512 processor has
            "x86-64-v4", True, 512, marks=pytest.mark.skipif(not host_has("avx512f", "avx512bw"), reason="no AVX-512")
        ),
    ],
)
def test_fused_and_vector_bits_probes_per_target(tmp_path, cpu, fused, bits):
    # numba compiling for a named processor (its own features: NUMBA_CPU_FEATURES empty), each in a child process with
    # a cache of its own: fused() tells whether that processor has a fused multiply-add, vector_bits() the width of
    # the registers its vectors are held in (SSE 128, AVX2 256, AVX-512 512).
    if not llvmlite.binding.get_process_triple().startswith("x86_64"):
        pytest.skip("x86-64 processor names")
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": "", "NUMBA_CACHE_DIR": str(tmp_path)}
    probe = "from pixelflowsom import _simd; print(_simd.fused(), _simd.vector_bits())"
    run = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True)
    assert run.stdout.split() == [str(fused), str(bits)]


def test_width_probe_adds():
    # vector_bits reads the assembly of this kernel: it must compile the kernels' vector arithmetic, for real.
    assert _simd.vector_bits() in (128, 256, 512)
    values = np.arange(2 * LANES, dtype=np.float32)
    out = np.zeros(LANES, np.float32)
    _simd._width_probe(values, out)
    np.testing.assert_array_equal(out, values[:LANES] + values[LANES:])


@numba.njit
def flush_all(x, out):
    for b in range(0, x.shape[0], LANES):
        _simd.store(out, b, _simd.flush_subnormal(_simd.load(x, b)))


def test_flush_subnormal_zeroes_exactly_the_magnitudes_below_the_smallest_normal():
    # Around 2**-126 and through all subnormals, of both signs, with NaN (kept with its bits) and infinities; each
    # result checked on its bits: +0.0 where |x| < 2**-126, x itself elsewhere.
    tiny = np.finfo(np.float32).tiny
    below = np.nextafter(tiny, np.float32(0))
    edges = [0.0, -0.0, 2.0**-149, 2.0**-140, below, tiny, np.nextafter(tiny, np.float32(1)), 1.0, np.inf, np.nan]
    rng = np.random.default_rng(2)
    random = np.ldexp(rng.uniform(0.5, 1, 4 * LANES), rng.integers(-155, -115, 4 * LANES))  # half subnormal
    x = np.concatenate([edges, np.negative(edges), random, -random, np.zeros(LANES)])[: 10 * LANES]
    x = x.astype(np.float32)
    out = np.empty_like(x)
    flush_all(x, out)
    magnitude = np.abs(x.astype(np.float64))
    keep = ~(magnitude < 2.0**-126)  # NaN kept
    np.testing.assert_array_equal(out.view(np.int32), np.where(keep, x.view(np.int32), 0))
    np.testing.assert_array_equal(out.view(np.int32), flush32(x).view(np.int32))
    assert 0 < np.count_nonzero(~keep & (x != 0)) < x.size // 2


@numba.njit
def copy_first_vector(array, out):
    _simd.store(out, 0, _simd.load(array, 0))


@pytest.mark.parametrize(
    "array", [np.zeros(LANES), np.zeros((2, LANES), np.float32), np.zeros(2 * LANES, np.float32)[::2]]
)
def test_load_accepts_only_contiguous_1d_float32(array):
    with pytest.raises(TypingError):
        copy_first_vector(array, np.zeros(LANES, np.float32))
