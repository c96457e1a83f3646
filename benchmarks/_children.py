"""What the out-of-core benchmarks share: a store kept in a folder between runs, and runs in child processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def array_shape(path: Path) -> tuple[int, ...] | None:
    """Shape of the zarr array at ``path``, or None if there is none (a store to write, not to reuse)."""
    import zarr

    return tuple(zarr.open_array(str(path), mode="r").shape) if path.is_dir() else None


def run_child(script: str, mode: str, args) -> dict:
    """Run ``script --child MODE`` on ``args.dir`` with ``args.fraction`` and ``args.n_clusters``; return its JSON.

    The child prints one JSON line last; its wall time (imports included) is added as ``wall_s``.
    """
    command = [sys.executable, script, "--child", mode, "--dir", str(args.dir)]
    command += ["--fraction", str(args.fraction), "--n-clusters", str(args.n_clusters)]
    t0 = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the {mode} child failed:\n{child.stderr[-4000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result
