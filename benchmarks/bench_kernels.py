"""Kernel benchmark: pixelflowsom against flowsom 0.2.x (``flowsom.models.SOMEstimator``), side by side.

Measures, on the same seeded synthetic data in one run, and prints ratios (higher is better for us):

* nearest-node assignment of 1M x 20 pixels to 100 nodes: ``PixelFlowSOM.predict``'s kernel against
  ``SOMEstimator.predict``, and its throughput against a bare float32 numpy matmul of the same shape;
* online SOM training on 400k x 20, 10x10 grid, rlen 10: our online SOM against ``SOMEstimator.fit`` and against
  pyFlowSOM's ``som()`` (R FlowSOM's C code, as ark's Pixie runs it), the same algorithm on the same data (pyFlowSOM
  starts from our initial codes; flowsom draws its own);
* batch SOM training on the same data against ``SOMEstimator.fit``, with the quantization errors of all of them;
* the online SOM on real tissue (``--only real``): ``PixelFlowSOM(som="online")``'s training (``_som.train_som`` with
  the estimator's defaults) on the MIBI image of ``benchmarks/bench_real.py`` (its 12 lineage channels, preprocessed
  as it does, sampled as ``fit`` samples them: ``--fraction`` 0.3 of the 1024 x 1024 pixels), and on the same pixels
  plus 1.0, timed alternately, with the ratio of the two times (target <= 1.15: preprocessed tissue, full of exact
  zeros, pulls codes towards 0, where without the flush to zero of :mod:`pixelflowsom._som` they would become
  subnormal, slow to compute with on x86) and the quantization errors (on the training pixels);
* the online SOM compiled for other processors (``--only targets``): the training row's online SOM (400k x 20, 10x10,
  rlen 10) in one child process per numba target, ``NUMBA_CPU_NAME`` set, each with a numba cache of its own (a
  temporary ``NUMBA_CACHE_DIR``): ``host`` (this machine's processor, neither variable set), ``haswell`` (AVX2 and
  FMA, no AVX-512: ``NUMBA_CPU_FEATURES`` empty, so that LLVM takes Haswell's features, not the host's; skipped on a
  processor without them) and ``generic`` (x86-64 with SSE2 only, no FMA, the target that shares compiled caches
  between machines), with the seconds, the ratio to ``host`` (target for ``generic``: <= 2), whether the kernels'
  multiply-add is fused (:func:`pixelflowsom._simd.fused`) and whether the codes equal ``host``'s (unfused, they may
  differ where two nodes tie to a float32 ulp).

Each timing is the best of ``--repeat`` runs after one warm-up (numba compilation excluded for both sides; pyFlowSOM,
compiled C, gets no warm-up). pyFlowSOM is optional; without it its column is skipped. Install it with
``pip install --no-deps "pyFlowSOM>=0.1.16,<0.2"``: every release pins ``numpy<2``, which a plain install satisfies
by downgrading numpy under the rest of the environment, yet its extension (typed memoryviews only) runs on numpy 2.
Run: ``python benchmarks/bench_kernels.py`` (add ``--quick`` for a smaller, faster smoke run; ``--only NAME``,
repeatable, runs only the rows ``assignment``, ``training``, ``real`` or ``targets``). ``--baseline SRC`` (repeatable)
also times the online SOM of another checkout, ``SRC`` being its ``src`` directory (e.g. a ``git worktree`` of an
earlier commit, or ``git archive HEAD src | tar -x -C DIR``), in a child process on the same data (the synthetic
training data and the real pixels), and prints our speed-up over it, its quantization error and whether its codes
equal ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from flowsom.models import SOMEstimator
from sklearn.utils import check_random_state

from pixelflowsom import _som

#: The real image of the ``real`` row (``benchmarks/bench_real.py``'s MIBI field of view).
REAL_IMAGE = "mibi"
#: The rows of the benchmark, in the order they run (``--only``).
ROWS = ("assignment", "training", "real", "targets")
#: The numba targets of the ``targets`` row: the environment variables of each child (``None``: the variable unset).
TARGETS = {
    "host": {"NUMBA_CPU_NAME": None, "NUMBA_CPU_FEATURES": None},
    "haswell": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""},
    "generic": {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": None},
}
#: The estimator's SOM parameters, passed from its defaults to ``_som.train_som``.
SOM_PARAMS = ("xdim", "ydim", "rlen", "mst", "alpha")

try:
    import pyFlowSOM
except ImportError:  # optional: its column is skipped
    pyFlowSOM = None


def blobs(n, p, n_centers=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 3, size=(n_centers, p))
    return (centers[rng.integers(0, n_centers, n)] + rng.normal(0, 0.3, size=(n, p))).astype(np.float32)


def best_of_alternating(fns, repeat):
    """Best time of every function of ``fns`` (a dict) over ``repeat`` rounds that run each once, in turn.

    Alternating spreads a change in machine load over all of them. One untimed warm-up call each first.
    """
    out = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(t) for name, t in times.items()}, out


def best_of(fn, repeat, warmup=True):
    if warmup:
        fn()  # numba compilation, caches
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def training_data(scale):
    """The training benchmark's data: 400k x 20 (``scale`` times fewer rows) on a 10 x 10 grid."""
    p, xdim, ydim = 20, 10, 10
    return blobs(400_000 // scale, p, seed=1).astype(np.float64), p, xdim, ydim


def online(Xt, xdim, ydim):
    """Our online SOM on the training benchmark (rlen 10, the seeded initial codes of :func:`som_setup`)."""
    nhbrdist, radii, alphas, codes0 = som_setup(Xt, xdim, ydim, seed=2)
    return _som.online_som(Xt, codes0, nhbrdist, 10, alphas, radii, check_random_state(3), ydim=ydim)[0]


def quantization_error(X, codes):
    from pixelflowsom._nearest import nearest_nodes

    return float(nearest_nodes(X, codes, return_distances=True)[1].mean())


def real_pixels(fraction, seed=0):
    """The training pixels of ``fit`` on the real image's lineage channels, preprocessed as ``bench_real.py`` does.

    Returns the ``(n, p)`` float64 values of ``sample_pixels`` (channel-major, as ``fit`` passes them on).
    """
    import xarray as xr
    from bench_real import DATA, LINEAGE, load_fovs, preprocess  # benchmarks/bench_real.py

    from pixelflowsom import sample_pixels

    fovs, channels = load_fovs(REAL_IMAGE, DATA)
    lineage = LINEAGE[REAL_IMAGE]
    # The lineage channels are preprocessed as one group, whatever the other channels: only they are needed here.
    (image,) = preprocess([fovs["img"][[channels.index(c) for c in lineage]]], lineage, lineage)
    pixels = xr.DataArray(image, dims=("c", "y", "x"), coords={"c": lineage})
    return sample_pixels(pixels, fraction, channels=lineage, random_state=seed).values


def train_real(values, params, repeat):
    """Time ``train_som`` (the online SOM) on ``values`` and on ``values + 1.0`` alternately; best times and codes."""
    data = {"pixels": values, "pixels + 1.0": (values.T + 1.0).T}  # both channel-major, as fit's sample

    def train(name):
        return _som.train_som(data[name], som="online", random_state=check_random_state(0), **params)[0]

    times, codes = best_of_alternating({name: lambda name=name: train(name) for name in data}, repeat)
    return data, times, codes


def subnormal_count(codes):
    c = np.asarray(codes, dtype=np.float32)
    return int(((c != 0) & (np.abs(c) < np.finfo(np.float32).tiny)).sum())


def som_setup(X, xdim, ydim, seed):
    nhbrdist = _som.grid_distances(xdim, ydim)
    (radii, alphas) = _som.radius_alpha_schedule(nhbrdist, (0.05, 0.01), 1)[0]
    codes0 = X[check_random_state(seed).choice(X.shape[0], xdim * ydim, replace=False)]
    return nhbrdist, radii, alphas, codes0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10x smaller data, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", action="append", default=[], metavar="SRC", help="another checkout's src/")
    parser.add_argument("--only", action="append", choices=ROWS, help="run only these rows (repeatable)")
    parser.add_argument("--fraction", type=float, default=0.3, help="fraction of the real image's pixels (real row)")
    parser.add_argument("--online-only", metavar="NPY", help=argparse.SUPPRESS)  # a --baseline child: codes to NPY
    parser.add_argument("--real-only", metavar="DIR", help=argparse.SUPPRESS)  # a --baseline child of the real row
    parser.add_argument("--target-only", metavar="NPY", help=argparse.SUPPRESS)  # a child of the targets row
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    repeat = 1 if args.quick else args.repeat
    warnings.filterwarnings("ignore")
    if args.online_only:  # only _som: older checkouts have no _nearest
        Xt, p, xdim, ydim = training_data(scale)
        t_on, codes_on = best_of(lambda: online(Xt, xdim, ydim), repeat)
        np.save(args.online_only, codes_on)
        print(json.dumps({"seconds": t_on, "module": _som.__file__}))
        return
    if args.target_only:  # the parent set NUMBA_CPU_NAME; codes to NPY
        from pixelflowsom import _simd

        Xt, p, xdim, ydim = training_data(scale)
        t_on, codes_on = best_of(lambda: online(Xt, xdim, ydim), repeat)  # the warm-up compiles
        np.save(args.target_only, codes_on)
        print(json.dumps({"seconds": t_on, "fused": _simd.fused()}))
        return
    if args.real_only:  # the pixels and parameters from the parent; codes back to the same folder
        with open(os.path.join(args.real_only, "params.json")) as f:
            params = json.load(f)
        values = np.load(os.path.join(args.real_only, "pixels_t.npy")).T
        _, times, codes = train_real(values, params, repeat)
        for i, name in enumerate(codes):
            np.save(os.path.join(args.real_only, f"codes{i}.npy"), codes[name])
        print(json.dumps({"seconds": times, "module": _som.__file__}))
        return
    rows = args.only or ROWS
    if "assignment" in rows:
        bench_assignment(scale, repeat)
    if "training" in rows:
        bench_training(scale, repeat, args.baseline)
    if "real" in rows:
        bench_real_tissue(args.fraction / scale, repeat, args.quick, args.baseline)
    if "targets" in rows:
        bench_targets(scale, repeat)


def bench_assignment(scale, repeat):
    from pixelflowsom._nearest import nearest_nodes

    # --- assignment: 1M x 20 pixels to 100 nodes
    n_assign, p, xdim, ydim = 1_000_000 // scale, 20, 10, 10
    X = blobs(n_assign, p, seed=0)
    ref = SOMEstimator(xdim=xdim, ydim=ydim, rlen=1, seed=1).fit(X[:20_000].astype(np.float64))
    codes = np.asarray(ref.codes, dtype=np.float64)
    X64 = X.astype(np.float64)
    t_ref, lab_ref = best_of(lambda: ref.predict(X64), repeat)
    t_ours, lab_ours = best_of(lambda: nearest_nodes(X, codes), repeat)
    codes32 = codes.astype(np.float32)
    t_mm, _ = best_of(lambda: X @ codes32.T, repeat)
    print(f"assignment {n_assign} x {p} -> {xdim * ydim} nodes")
    print(f"  flowsom SOMEstimator.predict  {t_ref:8.3f} s")
    print(f"  pixelflowsom (float32 GEMM)    {t_ours:8.3f} s   speed-up x{t_ref / t_ours:.1f}   (target >= 20)")
    print(f"  bare float32 numpy matmul      {t_mm:8.3f} s   our throughput {100 * t_mm / t_ours:.0f}% of it (>= 50)")
    print(f"  labels equal to flowsom's: {np.mean(lab_ref == lab_ours) * 100:.4f}%")


def bench_training(scale, repeat, baselines):
    # --- training: 400k x 20, rlen 10
    Xt, p, xdim, ydim = training_data(scale)
    n_train = Xt.shape[0]
    nhbrdist, radii, alphas, codes0 = som_setup(Xt, xdim, ydim, seed=2)

    def flowsom_fit():
        return SOMEstimator(xdim=xdim, ydim=ydim, rlen=10, seed=3).fit(Xt)

    def ours_online():
        return online(Xt, xdim, ydim)

    def ours_batch():
        return _som.batch_som(Xt, codes0, nhbrdist, 10, radii)[0]

    def pyflowsom_som():
        # pyFlowSOM's som() from our initial codes (it trains them in place when Fortran-ordered: give it a copy), with
        # the radius it derives from the grid (the same 0.67 quantile) and its own seeded C random generator.
        nodes = np.asfortranarray(codes0.copy())
        return pyFlowSOM.som(Xt, xdim, ydim, 10, alpha_range=(0.05, 0.01), nodes=nodes, seed=3)

    t_fit, fitted = best_of(flowsom_fit, repeat)
    t_on, codes_on = best_of(ours_online, repeat)
    t_ba, codes_ba = best_of(ours_batch, repeat)
    if pyFlowSOM is not None:
        t_py, codes_py = best_of(pyflowsom_som, repeat, warmup=False)

    def qe(c):
        return quantization_error(Xt, c)

    qe_ref, qe_on, qe_ba = qe(fitted.codes), qe(codes_on), qe(codes_ba)
    print(f"SOM training {n_train} x {p}, {xdim}x{ydim} grid, rlen 10 (quantization error: mean distance of the")
    print("training pixels to their nearest code)")
    print(f"  flowsom SOMEstimator.fit      {t_fit:8.3f} s   quantization error {qe_ref:.4f}")
    if pyFlowSOM is not None:
        print(f"  pyFlowSOM som()               {t_py:8.3f} s   quantization error {qe(codes_py):.4f}")
    else:
        print("  pyFlowSOM som()               not installed (see the module docstring)")
    print(f"  pixelflowsom online SOM        {t_on:8.3f} s   quantization error {qe_on:.4f}")
    print(f"    speed-up vs flowsom          x{t_fit / t_on:.1f}   (target >= 10)")
    if pyFlowSOM is not None:
        print(f"    speed-up vs pyFlowSOM        x{t_py / t_on:.1f}   (target >= 12)")
    print(
        f"  pixelflowsom batch SOM         {t_ba:8.3f} s   quantization error {qe_ba:.4f}   "
        f"speed-up vs flowsom x{t_fit / t_ba:.1f}   (target >= 20)"
    )
    print(f"  batch / online quantization error: {qe_ba / qe_on:.3f}   (target <= 1.05)")
    for src in baselines:
        with tempfile.TemporaryDirectory() as tmp:
            npy = os.path.join(tmp, "codes.npy")
            child = [sys.executable, __file__, "--online-only", npy, "--repeat", str(repeat)]
            env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
            run = subprocess.run(child + (["--quick"] if scale > 1 else []), env=env, check=True, capture_output=True)
            out = json.loads(run.stdout)
            qe_base = quantization_error(Xt, np.load(npy))
        print(f"  online SOM of {out['module']}")
        speed_up = out["seconds"] / t_on
        print(f"    {out['seconds']:8.3f} s   quantization error {qe_base:.4f}   ours x{speed_up:.2f} faster")


def bench_real_tissue(fraction, repeat, quick, baselines):
    from pixelflowsom import PixelFlowSOM

    defaults = PixelFlowSOM().get_params()
    params = {name: defaults[name] for name in SOM_PARAMS}
    values = real_pixels(fraction)
    data, times, codes = train_real(values, params, repeat)
    qe = {name: quantization_error(data[name], codes[name]) for name in data}
    print(
        f"online SOM on real tissue: the {REAL_IMAGE} image's {values.shape[1]} lineage channels preprocessed as "
        f"bench_real.py, {values.shape[0]} training pixels (fraction {fraction:g}),"
    )
    print(f"PixelFlowSOM(som='online')'s defaults {params}; quantization error on the training pixels")
    for name in data:
        print(
            f"  {name:14s} {times[name]:8.3f} s   quantization error {qe[name]:.6f}   "
            f"subnormal codes {subnormal_count(codes[name])}"
        )
    print(f"  time ratio pixels / pixels + 1.0: {times['pixels'] / times['pixels + 1.0']:.3f}   (target <= 1.15)")
    for src in baselines:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(os.path.join(tmp, "pixels_t.npy"), np.ascontiguousarray(values.T))
            with open(os.path.join(tmp, "params.json"), "w") as f:
                json.dump(params, f)
            child = [sys.executable, __file__, "--real-only", tmp, "--repeat", str(repeat)]
            env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
            run = subprocess.run(child + (["--quick"] if quick else []), env=env, check=True, capture_output=True)
            out = json.loads(run.stdout)
            base_codes = {name: np.load(os.path.join(tmp, f"codes{i}.npy")) for i, name in enumerate(data)}
        print(f"  online SOM of {out['module']}")
        for name in data:
            seconds, base = out["seconds"][name], base_codes[name]
            base_qe = quantization_error(data[name], base)
            same = "equal to ours" if np.array_equal(base, codes[name]) else "not ours"
            print(
                f"    {name:14s} {seconds:8.3f} s   quantization error {base_qe:.6f} "
                f"(ours {100 * (qe[name] / base_qe - 1):+.4f}%, target within 0.1%)   "
                f"subnormal codes {subnormal_count(base)}   codes {same}   ours x{seconds / times[name]:.2f}"
            )
        print(f"    time ratio pixels / pixels + 1.0: {out['seconds']['pixels'] / out['seconds']['pixels + 1.0']:.3f}")


def bench_targets(scale, repeat):
    import llvmlite.binding

    n_train = training_data(scale)[0].shape[0]
    features = llvmlite.binding.get_host_cpu_features()
    x86 = llvmlite.binding.get_process_triple().startswith("x86_64")
    print(f"online SOM training {n_train} x 20, 10x10 grid, rlen 10, compiled by numba for other processors")
    results, host_codes = {}, None
    for target, variables in TARGETS.items():
        if target != "host" and not x86:
            print(f"  {target:8s} skipped: not an x86-64 processor")
            continue
        if target == "haswell" and not (features.get("avx2") and features.get("fma")):
            print(f"  {target:8s} skipped: this processor has no AVX2 and FMA")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            env = {name: value for name, value in os.environ.items() if name not in variables}
            env |= {name: value for name, value in variables.items() if value is not None}
            env["NUMBA_CACHE_DIR"] = os.path.join(tmp, "numba")
            npy = os.path.join(tmp, "codes.npy")
            child = [sys.executable, __file__, "--target-only", npy, "--repeat", str(repeat)]
            run = subprocess.run(child + (["--quick"] if scale > 1 else []), env=env, check=True, capture_output=True)
            out = results[target] = json.loads(run.stdout)
            codes = np.load(npy)
        if target == "host":
            host_codes, same = codes, ""
        else:
            same = "   codes " + ("equal to host's" if np.array_equal(codes, host_codes) else "not host's")
        ratio = out["seconds"] / results["host"]["seconds"]
        goal = "   (target <= 2)" if target == "generic" else ""
        fused = "fused" if out["fused"] else "unfused"
        print(f"  {target:8s} {out['seconds']:8.3f} s   x{ratio:.2f} host's time{goal}   {fused} multiply-add{same}")


if __name__ == "__main__":
    main()
