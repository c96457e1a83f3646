"""Command-line benchmark: what the progress display costs, locally and on a dask.distributed cluster.

Writes a seeded cohort store (``bench_cohort.write_cohort``: 4 FOVs of 20 x 1024 x 1024 float32 by default), then
times, each as a subprocess (``python -m pixelflowsom``)::

    pixelflowsom cluster STORE --image fov000 ... --n-clusters 8 --overwrite [--quiet | --scheduler ADDRESS]

- ``progress``: the progress display, with stderr on a pseudo-terminal (the line redrawn in place);
- ``quiet``: ``--quiet``;
- ``dask ProgressBar``: ``--quiet`` inside ``dask.diagnostics.ProgressBar(dt=1.0)``, what the command did before
  (its timer thread is joined at the end of every computation);
- ``distributed``: the progress display with ``--scheduler ADDRESS`` on a ``distributed.LocalCluster(n_workers=2,
  threads_per_worker=1, processes=True)`` started here, stderr on a pseudo-terminal.

The local variants alternate, best of ``--repeat`` (default 3) each; every run labels the store anew
(``--overwrite``). Checks that the progress runs printed a progress line and the quiet ones nothing, and prints the
figures and the targets: progress within 10% of quiet; distributed <= 1.5x the local progress run.
Run: ``python benchmarks/bench_cli.py`` (``--fovs 2 --size 512`` for a quick run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_cohort import fov_names, write_cohort  # benchmarks/bench_cohort.py (scripts run from their folder)

#: The command before: the whole command inside dask's ProgressBar(dt=1.0) (``--quiet``: no display of its own).
OLD_BAR = (
    "import sys; from dask.diagnostics import ProgressBar; from pixelflowsom._cli import main\n"
    "with ProgressBar(dt=1.0, out=sys.stderr):\n"
    "    code = main(sys.argv[1:])\n"
    "sys.exit(code)"
)


def run(argv, *, terminal: bool, old_bar: bool = False) -> tuple[float, str]:
    """Run ``pixelflowsom ARGV`` in a subprocess; return its seconds and its stderr.

    ``terminal``: stderr is a pseudo-terminal (read by a thread here), else a pipe.
    """
    command = [sys.executable, "-c", OLD_BAR, *argv] if old_bar else [sys.executable, "-m", "pixelflowsom", *argv]
    chunks = []
    if terminal:
        parent, child = os.openpty()
        reader = threading.Thread(target=_drain, args=(parent, chunks), daemon=True)
        reader.start()
        t0 = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=child, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        os.close(child)
        reader.join(timeout=5)
        os.close(parent)
        err = b"".join(chunks).decode(errors="replace")
    else:
        t0 = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        err = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{err[-3000:]}")
    return seconds, err


def _drain(fd, chunks):
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child end is closed
            return
        if not data:
            return
        chunks.append(data)


def shows_progress(err: str) -> bool:
    return "% |" in err and " tasks | " in err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fovs", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-old", action="store_true", help="skip the dask ProgressBar(dt=1.0) runs")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="pixelflowsom-cli-"))
    try:
        seconds = write_cohort(folder, args.fovs, args.size, args.channels)
        store = folder / "cohort.zarr"
        print(
            f"{args.fovs} FOVs of {args.channels} x {args.size} x {args.size} float32 (store written in {seconds:.0f} "
            "s); pixelflowsom cluster --n-clusters 8 --overwrite",
            flush=True,
        )
        command = ["cluster", str(store), *(x for name in fov_names(args.fovs) for x in ("--image", name))]
        command += ["--n-clusters", "8", "--overwrite", "--pictures", str(folder / "pictures")]
        run([*command, "--quiet"], terminal=False)  # warm-up: numba's cache, the labels elements exist from here on
        variants = {
            "progress": {"argv": command, "terminal": True},
            "quiet": {"argv": [*command, "--quiet"], "terminal": False},
        }
        if not args.no_old:
            variants["dask ProgressBar"] = {"argv": [*command, "--quiet"], "terminal": True, "old_bar": True}
        times = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, kwargs in variants.items():
                seconds, err = run(**kwargs)
                times[name].append(seconds)
                if name == "quiet" and err.strip():
                    print(f"  quiet run wrote to stderr: {err[-500:]!r}")
                if name == "progress" and not shows_progress(err):
                    print(f"  no progress line in the {name} run: {err[-500:]!r}")
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
        ) as cluster:
            on_cluster = [*command, "--scheduler", cluster.scheduler_address]
            run([*on_cluster, "--quiet"], terminal=False)  # warm-up of the workers (imports, numba's cache)
            times["distributed"], printed = [], []
            for _ in range(args.repeat):
                seconds, err = run(on_cluster, terminal=True)
                times["distributed"].append(seconds)
                printed.append(shows_progress(err))
                if not printed[-1]:
                    print(f"  no progress line in the distributed run: {err[-500:]!r}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:18s} best {best[name]:6.2f} s   (runs: {runs})")
    print(f"progress / quiet: {best['progress'] / best['quiet']:.3f} (target <= 1.10)")
    if "dask ProgressBar" in best:
        print(f"dask ProgressBar(dt=1.0) / quiet: {best['dask ProgressBar'] / best['quiet']:.3f} (the command before)")
    print(
        f"distributed / local progress: {best['distributed'] / best['progress']:.3f} (target <= 1.5); progress "
        f"printed on the cluster: {sum(printed)} of {len(printed)} runs"
    )


if __name__ == "__main__":
    main()
