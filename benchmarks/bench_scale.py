"""Out-of-core benchmark: cluster an image larger than RAM from zarr and write its label images back to zarr.

1. Writes a seeded synthetic multiplexed image (default 40 channels x 8192 x 8192 float32, 10.7 GB) to a zarr
   store, one tile at a time (never whole in memory).
2. In a child process (so that its peak RSS is its own): opens the store lazily with dask, fits
   ``PixelFlowSOM(fraction=0.02)`` on it, computes both label images (SOM node and metacluster) and writes them to
   zarr in one pass over the image.
3. Prints wall times and the child's peak RSS (target: under 3 GB).

Run: ``python benchmarks/bench_scale.py`` (``--size 2048`` for a quick run; ``--keep`` keeps the store).
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


def write_image(path: Path, size: int, n_channels: int, tile: int, seed: int) -> float:
    import zarr

    from pixelflowsom._synthetic import make_synthetic_image

    array = zarr.create_array(
        store=str(path / "image.zarr"),
        shape=(n_channels, size, size),
        chunks=(1, tile, tile),
        dtype="float32",
        overwrite=True,
    )
    t0 = time.perf_counter()
    n_tiles = size // tile
    for i in range(n_tiles):
        for j in range(n_tiles):
            # Same phenotype profiles everywhere (same profile seed), a different tissue layout per tile.
            image, _ = make_synthetic_image(
                (tile, tile), n_channels=n_channels, n_phenotypes=8, seed=seed, layout_seed=seed + 1 + i * n_tiles + j
            )
            array[:, i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = image.values
    return time.perf_counter() - t0


def cluster(path: Path, fraction: float, n_clusters: int) -> dict:
    import dask
    import dask.array as da
    import xarray as xr
    import zarr

    from pixelflowsom import PixelFlowSOM

    dask.config.set(scheduler="threads")
    data = da.from_zarr(str(path / "image.zarr"))
    image = xr.DataArray(data, dims=("c", "y", "x"), coords={"c": [f"marker_{i:02d}" for i in range(data.shape[0])]})
    t0 = time.perf_counter()
    model = PixelFlowSOM(n_clusters=n_clusters, fraction=fraction, random_state=0).fit(image)
    t_fit = time.perf_counter() - t0
    labels = model.transform(image)  # lazy (2, y, x): [som_node, metacluster]
    targets = [
        zarr.create_array(
            store=str(path / f"{name}.zarr"),
            shape=labels.shape[1:],
            chunks=labels.data.chunksize[1:],
            dtype=labels.dtype,
            overwrite=True,
        )
        for name in ("som_nodes", "metaclusters")
    ]
    t1 = time.perf_counter()
    da.store([labels.data[0], labels.data[1]], targets, lock=False)
    t_label = time.perf_counter() - t1
    check = zarr.open_array(str(path / "metaclusters.zarr"))[:256, :256]
    return {
        "fit_s": t_fit,
        "label_and_write_s": t_label,
        "n_samples_fit": model.n_samples_fit_,
        "label_dtype": str(labels.dtype),
        "metaclusters_in_corner": sorted(int(v) for v in np.unique(check)),
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--channels", type=int, default=40)
    parser.add_argument("--tile", type=int, default=1024, help="zarr chunk size (y and x); channels are chunked by 1")
    parser.add_argument("--fraction", type=float, default=0.02)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(cluster(args.dir, args.fraction, args.n_clusters)))
        return
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="pixelflowsom-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        gb = args.channels * args.size**2 * 4 / 1e9
        print(f"writing {args.channels} x {args.size} x {args.size} float32 ({gb:.1f} GB) to {workdir} ...", flush=True)
        t_write = write_image(workdir, args.size, args.channels, args.tile, seed=0)
        print(f"  written in {t_write:.0f} s", flush=True)
        t0 = time.perf_counter()
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--dir",
                str(workdir),
                "--fraction",
                str(args.fraction),
                "--n-clusters",
                str(args.n_clusters),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t0
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"fit (fraction {args.fraction}, {result['n_samples_fit']} pixels): {result['fit_s']:.1f} s")
        print(
            f"label both images and write them to zarr ({result['label_dtype']}): {result['label_and_write_s']:.1f} s"
        )
        print(f"child wall time (incl. start-up): {wall:.1f} s")
        print(f"peak RSS of the clustering process: {result['peak_rss_gb']:.2f} GB (target < 3 GB; image {gb:.1f} GB)")
        print(f"metaclusters seen in the top-left 256 x 256 corner: {result['metaclusters_in_corner']}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
