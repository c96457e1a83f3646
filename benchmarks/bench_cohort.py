"""Cohort benchmark: one call clusters many fields of view (FOVs) of a zarr-backed SpatialData, harpy against ours.

For every cohort size (default 8, 32 and 128 FOVs of 20 channels x 512 x 512 float32), writes one seeded cohort to a
SpatialData zarr store: the phenotype profiles are shared by all FOVs (``make_synthetic_image(seed=0)``), their
layouts differ (``layout_seed``). Then, each in its own child process (so that its peak RSS, VmHWM, is its own),
runs the same call on the store read back with ``spatialdata.read_zarr``::

    im.flowsom(sdata, fovs, [f"{fov}_clusters" ...], [f"{fov}_metaclusters" ...], fraction=0.1, n_clusters=8,
               xdim=10, ydim=10, random_state=0)

with harpy (``harpy.im.flowsom``, harpy-analysis 0.4) and with pixelflowsom (``pixelflowsom.harpy.im.flowsom``),
each on a fresh copy of the store: every labels element is written into the store, as the call does on a backed
``sdata``. The timed part is the call plus reading every metacluster labels element back. For the in-memory
comparison, pixelflowsom also runs the same call on the same cohort held in memory (``--in-memory-at``, default 32
FOVs). ``--som`` runs the drop-in with other SOM algorithms too; ``--fixed-sample`` samples as many pixels from every
cohort as from the smallest (the sample, which the returned ``flowsom.FlowSOM`` holds, grows with the pixels at a
fixed fraction; with it fixed, the peak RSS shows what labelling more FOVs adds).

Prints per implementation and cohort size: seconds, seconds per FOV, peak RSS and the adjusted Rand index of the
metacluster labels against the true phenotypes (all FOVs pooled); then the targets: our seconds per FOV at the
largest cohort within 1.2x of the smallest; the backed call within 1.5x of the in-memory one; >= 15x faster than
harpy at 32 FOVs; our peak RSS within 20% from the smallest to the largest cohort.

harpy's time grows with the square of the number of FOVs; ``--harpy-max-fovs`` (default 32) skips it above that.
Needs the benchmark extra (``pip install -e ".[benchmark]"``). Run: ``python benchmarks/bench_cohort.py``
(``--fovs 4 8 --size 256`` for a quick run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import peak_rss_gb  # benchmarks/_memory.py (scripts run from their folder)

N_PHENOTYPES = 8


def fov_names(n):
    return [f"fov{i:03d}" for i in range(n)]


def write_cohort(folder: Path, n_fovs: int, size: int, n_channels: int) -> float:
    """Write the cohort store and the true phenotypes of every FOV; returns the seconds it took."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    from pixelflowsom._synthetic import make_synthetic_image

    t0 = time.perf_counter()
    store = folder / "cohort.zarr"
    sd.SpatialData().write(store)
    sdata = sd.read_zarr(store)
    truths = {}
    for i, name in enumerate(fov_names(n_fovs)):
        image, truth = make_synthetic_image(
            (size, size), n_channels=n_channels, n_phenotypes=N_PHENOTYPES, seed=0, layout_seed=1000 + i
        )
        sdata.images[name] = Image2DModel.parse(
            image.values, dims=("c", "y", "x"), c_coords=list(image.c.values), chunks=(n_channels, size, size)
        )
        truths[name] = truth.astype(np.uint8)
    sdata.write_element(list(sdata.images))
    sdata.write_consolidated_metadata()
    np.savez(folder / "truth.npz", **truths)
    return time.perf_counter() - t0


def child(impl: str, folder: Path, n_fovs: int, fraction: float, in_memory: bool) -> dict:
    import spatialdata as sd
    from sklearn.metrics import adjusted_rand_score

    options = {}
    if impl == "harpy":
        import harpy as hp
    else:
        import pixelflowsom.harpy as hp

        if impl != "pixelflowsom":
            options["som"] = impl.removeprefix("pixelflowsom-")

    sdata = sd.read_zarr(folder / "run.zarr")
    if in_memory:
        sdata = sd.SpatialData(images={name: sdata.images[name].persist() for name in sdata.images})
    names = fov_names(n_fovs)
    t0 = time.perf_counter()
    sdata, fsom, mapping = hp.im.flowsom(
        sdata,
        names,
        [f"{name}_clusters" for name in names],
        [f"{name}_metaclusters" for name in names],
        fraction=fraction,
        n_clusters=N_PHENOTYPES,
        xdim=10,
        ydim=10,
        random_state=0,
        **options,
    )
    labels = {name: np.asarray(sdata.labels[f"{name}_metaclusters"].values) for name in names}
    seconds = time.perf_counter() - t0
    peak = peak_rss_gb()  # before the pooled arrays of the ARI below (67 MB at 128 FOVs of 512^2)
    truth = np.load(folder / "truth.npz")
    pooled_truth = np.concatenate([truth[name].ravel() for name in names])
    pooled = np.concatenate([labels[name].ravel() for name in names])
    labelled = pooled > 0
    return {
        "seconds": seconds,
        "peak_rss_gb": peak,
        "ari": float(adjusted_rand_score(pooled_truth[labelled], pooled[labelled])),
    }


def run_child(impl, folder, n_fovs, fraction, in_memory=False):
    """Run one call in a child process on a fresh copy of the cohort store (the copy is not timed)."""
    shutil.rmtree(folder / "run.zarr", ignore_errors=True)
    shutil.copytree(folder / "cohort.zarr", folder / "run.zarr")
    argv = [sys.executable, __file__, "--child", impl, str(folder), str(n_fovs), repr(fraction)]
    out = subprocess.run([*argv, *(["--in-memory"] if in_memory else [])], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  {impl} failed:\n{out.stderr[-3000:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fovs", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--harpy-max-fovs", type=int, default=32)
    parser.add_argument("--in-memory-at", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument(
        "--fixed-sample",
        action="store_true",
        help="scale the fraction down with the cohort (fraction * smallest / n_fovs), so that every cohort samples as "
        "many pixels as the smallest: the sample (which the returned FlowSOM object holds) then no longer grows, "
        "and the peak RSS shows what the labelling of more FOVs adds",
    )
    parser.add_argument(
        "--som",
        nargs="+",
        default=["default"],
        choices=["default", "online", "hybrid", "batch"],
        help="pixelflowsom's som= option, one run per value ('default': not passed)",
    )
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "DIR", "N", "FRACTION"), help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, folder, n, fraction = args.child
        print(json.dumps(child(impl, Path(folder), int(n), float(fraction), args.in_memory)))
        return

    ours_names = ["pixelflowsom" if som == "default" else f"pixelflowsom-{som}" for som in args.som]

    results = {}
    for n_fovs in args.fovs:
        folder = Path(tempfile.mkdtemp(prefix="pixelflowsom-cohort-"))
        try:
            seconds = write_cohort(folder, n_fovs, args.size, args.channels)
            fraction = args.fraction * min(args.fovs) / n_fovs if args.fixed_sample else args.fraction
            print(
                f"{n_fovs} FOVs of {args.channels} x {args.size} x {args.size} float32 (store written in "
                f"{seconds:.0f} s); fraction {fraction:.4g}, 10x10 SOM, {N_PHENOTYPES} metaclusters",
                flush=True,
            )
            runs = {}
            if n_fovs <= args.harpy_max_fovs:
                runs["harpy"] = run_child("harpy", folder, n_fovs, fraction)
            for name in ours_names:
                runs[name] = run_child(name, folder, n_fovs, fraction)
                if n_fovs == args.in_memory_at:
                    runs[f"{name} in memory"] = run_child(name, folder, n_fovs, fraction, in_memory=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        results[n_fovs] = runs
        for name, r in runs.items():
            if r is not None:
                print(
                    f"  {name:24s} {r['seconds']:8.1f} s   {r['seconds'] / n_fovs:6.2f} s/FOV   peak RSS "
                    f"{r['peak_rss_gb']:5.2f} GB   ARI {r['ari']:.3f}",
                    flush=True,
                )
        for name in ours_names:
            if runs.get("harpy") and runs.get(name):
                print(f"  {name} speed-up over harpy: x{runs['harpy']['seconds'] / runs[name]['seconds']:.1f}")

    for name in ours_names:
        print(f"{name}:")
        ours = {n: r[name] for n, r in results.items() if r.get(name)}
        if len(ours) >= 2:
            small, large = min(ours), max(ours)
            per_fov = (ours[large]["seconds"] / large) / (ours[small]["seconds"] / small)
            rss = ours[large]["peak_rss_gb"] / ours[small]["peak_rss_gb"]
            print(f"  seconds per FOV, {large} / {small} FOVs: {per_fov:.2f} (target <= 1.2)")
            print(f"  peak RSS, {large} / {small} FOVs: {rss:.2f} (target <= 1.2)")
        at = results.get(args.in_memory_at, {})
        if at.get(name) and at.get(f"{name} in memory"):
            ratio = at[name]["seconds"] / at[f"{name} in memory"]["seconds"]
            print(f"  backed / in memory at {args.in_memory_at} FOVs: {ratio:.2f} (target <= 1.5)")
        at32 = results.get(32, {})
        if at32.get("harpy") and at32.get(name):
            ratio = at32["harpy"]["seconds"] / at32[name]["seconds"]
            print(f"  speed-up over harpy at 32 FOVs: x{ratio:.1f} (target >= 15)")


if __name__ == "__main__":
    main()
