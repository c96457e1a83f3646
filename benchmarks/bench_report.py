"""The HTML report of a run: its size, and its cost next to the ``cluster`` run that made it.

Writes a seeded cohort store (``bench_cohort.write_cohort``: 4 FOVs of 20 x 1024 x 1024 float32 by default), then,
``--repeat`` times, each in a subprocess (``python -m pixelflowsom``):

- ``cluster STORE --image fov000 ... --n-clusters 8 --overwrite --quiet``, which writes the report next to the store
  and prints how long that took (``Report: PATH (S s)``): the report's share is those seconds over the rest of the
  run (target: <= 20%);
- ``report STORE --image fov000 ... --quiet``: the report alone, regenerated from the store in a fresh process, with
  its peak RSS (``VmHWM``).

Prints the report's size (target: <= 5 MB) and the figures of the best run of each.
Run from ``benchmarks/``: ``python bench_report.py`` (``--fovs 2 --size 512`` for a quick look).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cohort import fov_names, write_cohort  # benchmarks/bench_cohort.py (scripts run from their folder)

_PEAK = (
    "import resource, runpy, sys; sys.argv = ['pixelflowsom', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('pixelflowsom', run_name='__main__')\n"
    "finally:\n    print('VmHWM_GB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, file=sys.stderr)\n"
)


def run(argv) -> tuple[float, str, str]:
    """Run ``pixelflowsom ARGV`` in a subprocess; return its seconds, stdout and stderr."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"pixelflowsom {' '.join(argv)} failed:\n{done.stderr}")
    return seconds, done.stdout, done.stderr


def peak_gb(stderr: str) -> float:
    return float(re.search(r"VmHWM_GB (\S+)", stderr).group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fovs", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        seconds = write_cohort(folder, args.fovs, args.size, args.channels)
        store = folder / "cohort.zarr"
        images = [a for name in fov_names(args.fovs) for a in ("--image", name)]
        shape = f"{args.channels} x {args.size} x {args.size}"
        print(f"{args.fovs} FOVs of {shape} float32 (store written in {seconds:.0f} s)")
        clusters, reports = [], []
        for _ in range(args.repeat):
            total, out, _ = run(["cluster", str(store), *images, "--n-clusters", "8", "--overwrite", "--quiet"])
            report_s = float(re.search(r"Report: .* \((\S+) s\)", out).group(1))
            clusters.append((total, report_s))
            alone, _, err = run(["report", str(store), *images, "--quiet"])
            reports.append((alone, peak_gb(err)))
        path = folder / "cohort_report.html"
        size_mb = path.stat().st_size / 1e6
        share = min(r / (t - r) for t, r in clusters)
        best = min(clusters, key=lambda c: c[1] / (c[0] - c[1]))
        print(f"  cluster (with its report)   runs: {', '.join(f'{t:.2f} s (report {r:.2f} s)' for t, r in clusters)}")
        print(f"  report alone, fresh process runs: {', '.join(f'{s:.2f} s, {g:.2f} GB' for s, g in reports)}")
        print(f"report size: {size_mb:.2f} MB (target <= 5)")
        print(
            f"report / rest of the cluster run: {share:.3f} (best run: {best[1]:.2f} s of {best[0]:.2f} s; "
            "target <= 0.20)"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
