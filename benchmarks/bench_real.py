"""FlowSOM pixel-clustering quality on real tissue: pixelflowsom.harpy.im.flowsom against harpy.im.flowsom.

Image sets (``/work/shared/realdata``, see its README; never downloaded at run time):

- ``mibi``: MIBI-TOF breast tissue, HER2 panel, 22 x 1024 x 1024 ion counts;
- ``codex``: CODEX lymphoid tissue crop, 56 x 501 x 501, 8-bit;
- ``cohort``: a cohort of 3 fields of view (FOVs) cut from the MIBI image (the two images have different panels, so
  a cohort comes from one of them): the three non-overlapping 22 x 512 x 512 crops at the top-left, top-right and
  bottom-left corners of its 1024 x 1024 field of view (elements ``fov_top_left``, ``fov_top_right``,
  ``fov_bottom_left``), clustered in one call on the list, one output name pair per FOV, as harpy users cluster a
  cohort: ``flowsom(sdata, fovs, [f"{fov}_clusters" ...], [f"{fov}_metaclusters" ...], ...)``;
- ``codex-tiled`` (opt-in): the CODEX crop's counts tiled 4 x 4 and cut to 56 x 2000 x 2000 in memory, for speed on a
  big many-channel image (each tissue pixel appears up to 16 times: its quality figures repeat ``codex``'s).

Lineage channels, passed as ``channels=[...]`` in the order listed in ``LINEAGE`` (not the image's order, so that the
channel order of the selection is exercised too; the cohort's are the MIBI image's):

- MIBI (12 of 22): CD45, CD3, CD4, CD8, CD20 (immune); PanKeratin, ECadherin, BetaCatenin, HER2, ER (epithelium /
  tumour); SMA, Vimentin (stroma). Left out: ``Background`` (the instrument's background channel), ``Membrane`` (a
  derived channel), HH3 and LaminAC (nuclear), Ki67 (proliferation state), GLUT1 (metabolic state), HLA_Class_1,
  NaK ATPase and BetaTubulin (expressed by nearly every cell: structural, not lineage), CD9 (tetraspanin on many cell
  types).
- CODEX (22 of 56): CD45; CD3, CD4, CD8, CD7 (T/NK); CD20, CD19, PAX5, CD79a (B); CD138 (plasma); CD68, CD163, CD11b,
  CD11c, CD15, HLA DR (myeloid / antigen presenting); CD56, CD57 (NK); CD31, CD34, Podoplanin, CD90 (vessels, stroma).
  Left out: DAPI (DNA); CD21, Lambda, Collagen IV, Helios, EBNA1 (under 8% non-zero pixels: empty in this crop);
  Cytokeratin and Tryptase (flat: blurred 99th percentile under 2x the median, no structure); activation, exhaustion,
  homing, death and transcription-factor markers (Ki-67, PD-1, PD-L1, LAG3, Tim3, ICOS, CD69, CD25, CD38, BCL-2,
  BCL-6, FADD, NOXA, p53, Serpin B9, Granzyme B, MEF2B, TCF7-TCF1, FOXP3, CCR4, CCR7, CXCR5, CD62L, CD45RA, CD45RO)
  and the light chains Kappa / Lambda.

Preprocessing (in the parent, once per image; every implementation reads the same float32 ``.npy``):
``pixelflowsom.PixelPreprocessor`` with harpy's ``pixel_clustering_preprocess`` defaults (it mirrors that function):
per-channel division by the 99th percentile of the non-zero pixels (``q=99``), Gaussian blur with sigma 2, pixels
whose channel sum is not above the 5th percentile of the (pre-blur) channel sums become NaN (``q_sum=5``; zero-sum
pixels too), division of every pixel by its channel sum (``norm_sum``), and division of every channel by its 99.9th
percentile (``q_post=99.9``). The lineage channels are preprocessed as one group, exactly as
``harpy.im.pixel_clustering_preprocess(..., channels=lineage)`` would (so the pixel sums are lineage sums, as in ark's
Pixie); the other channels get the same steps as a group of their own, only so that the image element carries the
whole panel, as users' images do. Their NaN mask differs from the lineage group's: background is where the lineage
channels are NaN, and labels that depended on unselected channels would show in the correctness columns. (With these
defaults the MIBI field of view has no background at all: after the blur every pixel's lineage sum is above the
threshold. About 8% of its pixels are NaN in the other channels, 3.4% of the CODEX crop's pixels are background.)
The cohort is preprocessed as a user preprocesses a cohort, not cut from the preprocessed MIBI image: the raw crops
go through the same two groups as one list, as ``harpy.im.pixel_clustering_preprocess(sdata, fovs, ...)`` does a list
of FOVs (``PixelPreprocessor`` with its default ``combine="mean"``): every FOV is blurred on its own (its borders
reflected, not blurred with the neighbouring crop), and every percentile (``q``, ``q_sum``, ``q_post``) is computed
per FOV and averaged over the FOVs.

Runs, per image set: ``harpy.im.flowsom`` and ``pixelflowsom.harpy.im.flowsom`` with ``som="online"``,
``som="batch"``, ``som="hybrid"`` and without ``som`` (its default), each with ``random_state`` = 0 .. seeds-1, all
with ``fraction=0.1``, ``xdim = ydim = 10``, ``n_clusters=12``, on an in-memory SpatialData holding the whole image,
or every FOV of the cohort (all channels, chunks of 1024 x 1024). Every call runs in its own child process (so its
peak RSS, ``VmHWM``, is its own); runs are interleaved seed by seed so that a change in machine load spreads over all
implementations. The child saves the returned codes (``fsom.model.codes``), the mapping, both written labels elements
of every FOV and the returned sample (FOV, coordinates, values, ``distance_to_bmu``) into a temporary directory, which
the script removes. The children share a numba cache in that directory, filled by one untimed warm-up call of each
pixelflowsom variant per image set (pixelflowsom caches its compiled kernels, so only a user's very first call
compiles them: up to ~10 s more); flowsom does not cache its numba functions, so every harpy call compiles them, as it
does for its users.

Printed per implementation and image set (means over seeds unless said otherwise; for the cohort, every figure is
over the pixels of all its FOVs pooled):

- ``time``: seconds of the call plus reading the metacluster labels (of every FOV) into memory (as
  ``bench_harpy.py``), mean / min;
- ``peak RSS``: the child's ``VmHWM`` (imports and the image included, the same for all), max over seeds, and in
  brackets what the call added to the resident memory before it;
- ``QE``: quantization error: the mean Euclidean distance of every non-background pixel (its lineage channels, in the
  order passed) to its nearest code of ``fsom.model.codes``, in float64 (mean +- sd over seeds);
- ``seed ARI``: mean adjusted Rand index of the metacluster maps (the written metacluster labels at non-background
  pixels) over all pairs of seeds;
- ``vs harpy``: mean ARI of the implementation's maps against harpy's over all seed pairs (seeds x seeds: the same
  ``random_state`` does not draw the same sample in the two implementations, so seed-matched pairs mean nothing
  more); for harpy itself, its seed ARI;
- ``node=NN``: fraction of non-background pixels whose written SOM-node label is the float64 nearest node of the
  returned codes (ties in float64 count as equal), computed from that FOV's selected channels; ``meta=map``:
  fraction whose written metacluster is ``mapping[written node]``; ``bg``: number of pixels where "label 0" and
  "background" disagree (both elements of every FOV). Together they check every element of every written labels
  element.

Then the seed ARI and ARI against harpy of the maps that the returned models imply (``mapping[float64 nearest node
of the codes]`` at every non-background pixel: what correct labels would be; the same as the written maps when
``node=NN`` and ``meta=map`` are 100%); a check of the quality computation on the returned samples (the same float64
nearest-code distance of the sample values against the mean of ``obs["distance_to_bmu"]``, and the sample values
against the image, of the FOV in ``obs["fov_labels"]``); and a summary: the quality bar "QE <= harpy's and seed ARI
>= harpy's - 0.02", speed-ups (harpy / implementation) of the mean and of the min time, peak RSS ratios, and the
target: the default (``pixelflowsom``, no ``som``) >= 15x faster than harpy (mean time ratio), which the script
repeats for every image set at the end.

Needs the benchmark extra: ``pip install -e ".[benchmark]"`` (harpy-analysis 0.4, flowsom, spatialdata). Run:
``python benchmarks/bench_real.py`` (``--images mibi codex cohort`` by default; add ``codex-tiled``; ``--quick`` for a
smoke run with 2 seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from _memory import peak_rss_gb  # benchmarks/_memory.py (scripts run from their folder)

DATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
IMPLEMENTATIONS = ("harpy", "pixelflowsom-online", "pixelflowsom-batch", "pixelflowsom-hybrid", "pixelflowsom")
IMAGES = {
    "mibi": "mibi_her2_fov8.npz",
    "codex": "codex_crop501.npz",
    "codex-tiled": "codex_crop501.npz",
    "cohort": "mibi_her2_fov8.npz",
}
#: Lineage channels by cell type, in the order passed as ``channels=`` (see the module docstring for the choice).
LINEAGE_GROUPS = {
    "mibi": {
        "immune": ("CD45", "CD3", "CD4", "CD8", "CD20"),
        "epithelium / tumour": ("PanKeratin", "ECadherin", "BetaCatenin", "HER2", "ER"),
        "stroma": ("SMA", "Vimentin"),
    },
    "codex": {
        "leukocytes": ("CD45",),
        "T / NK": ("CD3", "CD4", "CD8", "CD7"),
        "B / plasma": ("CD20", "CD19", "PAX5", "CD79a", "CD138"),
        "myeloid / antigen presenting": ("CD68", "CD163", "CD11b", "CD11c", "CD15", "HLA DR"),
        "NK": ("CD56", "CD57"),
        "vessels / stroma": ("CD31", "CD34", "Podoplanin", "CD90"),
    },
}
LINEAGE = {name: [c for group in groups.values() for c in group] for name, groups in LINEAGE_GROUPS.items()}
LINEAGE["codex-tiled"] = LINEAGE["codex"]
LINEAGE["cohort"] = LINEAGE["mibi"]
TILED_SIZE = 2000
COHORT_FOV = 512  # the cohort's FOVs are COHORT_FOV x COHORT_FOV crops of the MIBI field of view
#: The cohort's FOVs (element names) and the corner of the MIBI field of view each is cut from: (top?, left?).
COHORT_CORNERS = {"fov_top_left": (True, True), "fov_top_right": (True, False), "fov_bottom_left": (False, True)}
SPEED_UP_TARGET = 15.0  # of the default (pixelflowsom, no som) over harpy, mean time ratio
CHUNK = 1024  # spatial chunks of the image element, as in bench_harpy.py
QUALITY_ARI_SLACK = 0.02
WARM_UP_SEED = 12345  # random_state of the untimed warm-up calls, not among the timed seeds


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**3


# ----------------------------------------------------------------------------------------------------------- child


def child(impl: str, data: Path, run: Path, seed: int, n_clusters: int, fraction: float, grid: int) -> dict:
    """One call of one implementation on the image in ``data``; artifacts go to ``run``, figures to stdout."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    options = {}
    if impl == "harpy":
        import harpy as hp
    else:
        import pixelflowsom.harpy as hp

        if impl != "pixelflowsom":
            options["som"] = impl.split("-")[1]  # pixelflowsom-online / -batch / -hybrid; else the default

    meta = json.loads((data / "meta.json").read_text())
    fovs = meta["fovs"]
    elements = {}
    for fov in fovs:
        image = np.load(data / f"{fov}.npy")
        elements[fov] = Image2DModel.parse(
            image, dims=("c", "y", "x"), c_coords=meta["channels"], chunks={"c": image.shape[0], "y": CHUNK, "x": CHUNK}
        )
    sdata = sd.SpatialData(images=elements)
    del image, elements
    if meta["cohort"]:  # one call on the list of FOVs, one output name pair per FOV, as harpy users cluster a cohort
        names = fovs, [f"{fov}_clusters" for fov in fovs], [f"{fov}_metaclusters" for fov in fovs]
    else:
        names = fovs[0], "clusters", "metaclusters"
    cluster_names, metacluster_names = ([n] if isinstance(n, str) else n for n in names[1:])
    rss_before = current_rss_gb()
    t0 = time.perf_counter()
    sdata, fsom, mapping = hp.im.flowsom(
        sdata,
        *names,
        channels=list(meta["selected"]),
        fraction=fraction,
        n_clusters=n_clusters,
        xdim=grid,
        ydim=grid,
        random_state=seed,
        **options,
    )
    metaclusters = [np.asarray(sdata.labels[name].values) for name in metacluster_names]
    seconds = time.perf_counter() - t0
    peak = peak_rss_gb()
    clusters = [np.asarray(sdata.labels[name].values) for name in cluster_names]
    cells = fsom.get_cell_data()
    np.save(run / "codes.npy", np.asarray(fsom.model.codes, dtype=np.float64))
    np.save(run / "mapping_index.npy", np.asarray(mapping.index, dtype=np.int64))
    np.save(run / "mapping.npy", np.asarray(mapping.to_numpy(), dtype=np.int64))
    for i, (c, m) in enumerate(zip(clusters, metaclusters, strict=True)):  # one pair per FOV, in the order of fovs
        np.save(run / f"clusters_{i}.npy", c)
        np.save(run / f"metaclusters_{i}.npy", m)
    np.save(run / "sample_yx.npy", np.asarray(cells.obsm["spatial"]).astype(np.int64))
    regions = cells.obs["fov_labels"].astype(str).to_numpy()  # harpy's default region_key: the sampled pixel's FOV
    np.save(run / "sample_fov.npy", np.array([fovs.index(r) if r in fovs else -1 for r in regions], dtype=np.int64))
    np.save(run / "sample_x.npy", np.asarray(cells.X, dtype=np.float64))
    np.save(run / "sample_distance.npy", cells.obs["distance_to_bmu"].to_numpy(dtype=np.float64))
    return {
        "seconds": seconds,
        "peak_rss_gb": peak,
        "call_rss_gb": peak - rss_before,
        "var_names": [str(v) for v in cells.var_names],
        "label_dtypes": [str(clusters[0].dtype), str(metaclusters[0].dtype)],
        "model": f"{type(fsom.model).__name__}({type(fsom.model.cluster_model).__name__})",
    }


# ------------------------------------------------------------------------------------------------ data preparation


def cohort_crops(height: int, width: int) -> dict[str, tuple[slice, slice]]:
    """The (y, x) slices of the cohort's FOVs: COHORT_FOV x COHORT_FOV crops at three corners of the field of view."""
    if height < 2 * COHORT_FOV or width < 2 * COHORT_FOV:
        raise ValueError(f"a {height} x {width} image has no three non-overlapping {COHORT_FOV}^2 corner crops")
    crops = {}
    for fov, (top, left) in COHORT_CORNERS.items():
        y0, x0 = (0 if top else height - COHORT_FOV), (0 if left else width - COHORT_FOV)
        crops[fov] = slice(y0, y0 + COHORT_FOV), slice(x0, x0 + COHORT_FOV)
    return crops


def load_fovs(name: str, data_dir: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The raw field(s) of view of an image set by element name (one, ``img``, except for ``cohort``), channels."""
    z = np.load(data_dir / IMAGES[name])
    image, channels = z["img0"], [str(c) for c in z["channels"]]
    if name == "codex-tiled":
        reps = -(-TILED_SIZE // image.shape[1]), -(-TILED_SIZE // image.shape[2])
        image = np.tile(image, (1, *reps))[:, :TILED_SIZE, :TILED_SIZE]
    if name == "cohort":
        crops = cohort_crops(*image.shape[1:])
        return {fov: np.ascontiguousarray(image[:, ys, xs]) for fov, (ys, xs) in crops.items()}, channels
    return {"img": np.ascontiguousarray(image)}, channels


def preprocess(images: list[np.ndarray], channels: list[str], selected: list[str]) -> list[np.ndarray]:
    """Preprocess the selected channels as one group and the others as another; all channels, in the image's order.

    Several images are preprocessed as one list, as ``harpy.im.pixel_clustering_preprocess`` does a list of FOVs:
    every FOV is blurred on its own, the percentiles are computed per FOV and averaged over the FOVs.
    """
    import xarray as xr

    from pixelflowsom import PixelPreprocessor

    outs = [np.empty(image.shape, dtype=np.float32) for image in images]
    sel = [channels.index(c) for c in selected]
    rest = [i for i in range(len(channels)) if i not in sel]
    for group in (sel, rest):
        if not group:
            continue
        arrs = [
            xr.DataArray(image[group], dims=("c", "y", "x"), coords={"c": [channels[i] for i in group]})
            for image in images
        ]
        pre = PixelPreprocessor(q=99.0, q_sum=5.0, q_post=99.9, sigma=2.0, norm_sum=True)
        results = pre.fit_transform(arrs if len(arrs) > 1 else arrs[0])
        for out, result in zip(outs, results if len(arrs) > 1 else [results], strict=True):
            out[group] = result.values
    return outs


# ---------------------------------------------------------------------------------------------------------- metrics


def _squared(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of the rows of ``x`` to the matching rows of ``rows``, in float64."""
    return ((x - rows) ** 2).sum(axis=1)


def nearest_nodes(pixels, codes, written=None, chunk=1 << 16):
    """Float64 nearest code of every pixel (exact argmin; the lower index wins an exact tie).

    Candidates come from the expansion ``|x|^2 - 2 x.c + |c|^2``; rows whose two best candidates are closer than a
    bound far above its rounding error are decided by the exact distances to every code. Returns the nearest node,
    the squared distance to it and (if ``written`` nodes are given, 0-based, -1 for none) the squared distance to
    the written node (``inf`` for none or out of range).
    """
    codes = np.asarray(codes, dtype=np.float64)
    c2 = (codes * codes).sum(axis=1)
    n = len(pixels)
    best = np.empty(n, dtype=np.int64)
    d_best = np.empty(n)
    d_written = np.full(n, np.inf) if written is not None else None
    for start in range(0, n, chunk):
        x = pixels[start : start + chunk].astype(np.float64)
        x2 = (x * x).sum(axis=1)
        d2 = x2[:, None] - 2.0 * (x @ codes.T) + c2[None, :]
        b = d2.argmin(axis=1)
        two = np.partition(d2, 1, axis=1)[:, :2] if len(codes) > 1 else np.repeat(d2, 2, axis=1)
        close = np.flatnonzero(two[:, 1] - two[:, 0] <= 1e-9 * (1.0 + x2 + c2.max()))
        if close.size:
            exact = ((x[close, None, :] - codes[None, :, :]) ** 2).sum(axis=2)
            b[close] = exact.argmin(axis=1)
        best[start : start + len(x)] = b
        d_best[start : start + len(x)] = _squared(x, codes[b])
        if written is not None:
            w = written[start : start + len(x)]
            ok = (w >= 0) & (w < len(codes))
            d_written[start : start + len(x)][ok] = _squared(x[ok], codes[w[ok]])
    return best, d_best, d_written


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (small ints), from their contingency table."""
    a = a.astype(np.int64) - a.min()
    b = b.astype(np.int64) - b.min()
    k = int(max(a.max(), b.max())) + 1
    table = np.bincount(a * k + b, minlength=k * k).astype(np.float64)

    def pairs(counts):
        return float((counts * (counts - 1) / 2).sum())

    table = table.reshape(k, k)
    index, rows, cols = pairs(table), pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    total = len(a) * (len(a) - 1) / 2
    expected = rows * cols / total
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


def _written(run: Path, kind: str, shapes: list[tuple[int, int]]) -> np.ndarray:
    """The written labels elements of ``kind`` (clusters or metaclusters) of every FOV, raveled and concatenated."""
    labels = [np.load(run / f"{kind}_{i}.npy") for i in range(len(shapes))]
    for i, (label, shape) in enumerate(zip(labels, shapes, strict=True)):
        if label.shape != shape:
            raise ValueError(f"{kind} of FOV {i} have shape {label.shape}, not the image's {shape}")
    return np.concatenate([label.reshape(-1) for label in labels])


def evaluate(run: Path, shapes, fg_index, pixels, row_of, n_nodes) -> dict:
    """Quality and correctness figures of one run from its artifacts (float64, in the parent).

    ``shapes`` are the FOVs' ``(y, x)`` shapes; the pixels of all FOVs are pooled, FOV after FOV, each raveled: so are
    ``fg_index`` (the pooled indices of the non-background pixels), ``pixels`` (their selected channels) and
    ``row_of`` (the row of ``pixels`` of every pooled index, -1 for background).
    """
    codes = np.load(run / "codes.npy")
    clusters = _written(run, "clusters", shapes)
    metaclusters = _written(run, "metaclusters", shapes)
    mapping_index, mapping = np.load(run / "mapping_index.npy"), np.load(run / "mapping.npy")
    background = np.ones(clusters.size, dtype=bool)
    background[fg_index] = False
    node = clusters[fg_index].astype(np.int64) - 1
    meta = metaclusters[fg_index].astype(np.int64)
    best, d_best, d_written = nearest_nodes(pixels, codes, written=node)
    lookup = np.full(n_nodes + 1, -1, dtype=np.int64)
    mapping_ok = np.array_equal(mapping_index, np.arange(1, n_nodes + 1)) and codes.shape[0] == n_nodes
    if mapping_ok:
        lookup[1:] = mapping
    in_range = (node >= 0) & (node < n_nodes)
    # The sample: its values against the image, its distance_to_bmu against the float64 nearest-code distance.
    yx = np.load(run / "sample_yx.npy")
    fov = np.load(run / "sample_fov.npy")
    x = np.load(run / "sample_x.npy")
    distance = np.load(run / "sample_distance.npy")
    heights, widths = np.array(shapes).T
    offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]])
    known = (fov >= 0) & (yx[:, 0] >= 0) & (yx[:, 0] < heights[fov]) & (yx[:, 1] >= 0) & (yx[:, 1] < widths[fov])
    rows = np.full(len(yx), -1, dtype=np.int64)
    rows[known] = row_of[(offsets[fov] + yx[:, 0] * widths[fov] + yx[:, 1])[known]]
    on_fg = rows >= 0
    sample_values = np.full(x.shape, np.nan)
    sample_values[on_fg] = pixels[rows[on_fg]]
    _, d_sample, _ = nearest_nodes(x, codes)
    return {
        "qe": float(np.sqrt(d_best).mean()),
        "node_nn": float(((node == best) | (d_written == d_best)).mean()),
        "meta_map": float((in_range & (meta == lookup[np.clip(node + 1, 0, n_nodes)])).mean()),
        "bg_mismatch": int(((clusters == 0) != background).sum() + ((metaclusters == 0) != background).sum()),
        "mapping_ok": mapping_ok,
        "map": meta.astype(np.uint16),
        "map_nn": lookup[best + 1].astype(np.int16),
        "sample_qe": float(np.sqrt(d_sample).mean()),
        "sample_bmu": float(distance.mean()),
        "sample_value_error": float(np.nanmax(np.abs(x - sample_values))) if on_fg.all() else float("inf"),
        "n_sampled": len(x),
    }


# ---------------------------------------------------------------------------------------------------------- runner


def run_child(impl, data, run, seed, args, env) -> tuple[dict | None, str]:
    command = [sys.executable, __file__, "--child", impl, str(data), str(run), str(seed)]
    command += ["--n-clusters", str(args.n_clusters), "--fraction", str(args.fraction), "--grid", str(args.grid)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired as error:
        tail = error.stderr or ""
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return None, f"timed out after {args.timeout} s\n{tail[-3000:]}"
    if out.returncode != 0:
        return None, f"exit code {out.returncode}\n{out.stderr[-3000:]}"
    try:
        return json.loads(out.stdout.strip().splitlines()[-1]), ""
    except (json.JSONDecodeError, IndexError):
        return None, f"no result on stdout\n{out.stdout[-1000:]}\n{out.stderr[-2000:]}"


def write_data(folder: Path, images: dict[str, np.ndarray], channels, selected, cohort: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for fov, image in images.items():
        np.save(folder / f"{fov}.npy", image)
    meta = {"channels": channels, "selected": selected, "fovs": list(images), "cohort": cohort}
    (folder / "meta.json").write_text(json.dumps(meta))


def warm_up(impls, data: Path, tmp: Path, args, env) -> None:
    """One untimed call of every pixelflowsom variant on the image, so that the timed calls find its kernels compiled.

    On the image itself: a crop leaves some kernel specialisations (index dtypes, block layouts) uncompiled.
    """
    for impl in impls:
        if impl == "harpy":
            continue
        run = Path(tempfile.mkdtemp(prefix=f"warm-up-{impl}-", dir=tmp))
        result, error = run_child(impl, data, run, WARM_UP_SEED, args, env)
        shutil.rmtree(run)
        if result is None:
            print(f"  warm-up of {impl} FAILED ({error.splitlines()[0]}):\n{_indent(error)}", flush=True)


def _indent(text: str) -> str:
    return "\n".join("      | " + line for line in text.strip().splitlines()[-25:])


def _mean_pairwise(maps_a, maps_b=None) -> float:
    if maps_b is None:
        values = [ari(maps_a[i], maps_a[j]) for i in range(len(maps_a)) for j in range(i + 1, len(maps_a))]
    else:
        values = [ari(a, b) for a in maps_a for b in maps_b]
    return float(np.mean(values)) if values else float("nan")


def bench_image(name, args, tmp: Path, env, ari_checked: list) -> float | None:
    """Benchmark one image set; returns the speed-up of the default (mean time ratio), None without it."""
    t0 = time.perf_counter()
    raw, channels = load_fovs(name, args.data)
    selected = LINEAGE[name]
    missing = [c for c in selected if c not in channels]
    if missing:
        raise KeyError(f"lineage channels {missing} are not in {IMAGES[name]}; its channels are {channels}")
    images = dict(zip(raw, preprocess(list(raw.values()), channels, selected), strict=True))
    del raw
    # The pixels of all FOVs pooled, FOV after FOV (see evaluate).
    shapes = [image.shape[1:] for image in images.values()]
    sel = [channels.index(c) for c in selected]
    foregrounds = [~np.isnan(image[sel]).any(axis=0).reshape(-1) for image in images.values()]
    offsets = np.concatenate([[0], np.cumsum([f.size for f in foregrounds])[:-1]])
    fg_index = np.concatenate([offset + np.flatnonzero(f) for offset, f in zip(offsets, foregrounds, strict=True)])
    pixels = np.concatenate(  # (n_fg, n_selected) float32
        [image[sel].reshape(len(sel), -1)[:, f].T for image, f in zip(images.values(), foregrounds, strict=True)]
    )
    row_of = np.full(sum(f.size for f in foregrounds), -1, dtype=np.int64)
    row_of[fg_index] = np.arange(len(fg_index))
    data = tmp / name
    write_data(data, images, channels, selected, cohort=name == "cohort")
    seconds = time.perf_counter() - t0
    c, h, w = next(iter(images.values())).shape
    if name == "cohort":
        what = (
            f"{len(images)} FOVs of {c} x {h} x {w} float32 cut from {IMAGES[name]} ({', '.join(images)}; "
            f"preprocessed as one list), clustered in one call"
        )
    else:
        what = f"{IMAGES[name]}{' tiled' if name == 'codex-tiled' else ''}, {c} x {h} x {w} float32"
    print(
        f"\n{name}: {what} (all channels in the element), {len(selected)} lineage channels passed as channels=: "
        f"{', '.join(selected)}",
        flush=True,
    )
    per_fov = f" (per FOV: {', '.join(f'{f.mean():.1%}' for f in foregrounds)})" if len(foregrounds) > 1 else ""
    print(
        f"  preprocessed in {seconds:.1f} s; {len(fg_index)} non-background pixels "
        f"({len(fg_index) / row_of.size:.1%}){per_fov}; fraction {args.fraction}, {args.grid}x{args.grid} SOM, "
        f"{args.n_clusters} metaclusters, random_state {', '.join(map(str, range(args.seeds)))}; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    del images, foregrounds
    warm_up(args.implementations, data, tmp, args, env)

    n_nodes = args.grid * args.grid
    results = {impl: [] for impl in args.implementations}
    for seed in range(args.seeds):
        for impl in args.implementations:
            run = Path(tempfile.mkdtemp(prefix=f"{impl}-{seed}-", dir=tmp))
            result, error = run_child(impl, data, run, seed, args, env)
            if result is None:
                print(f"  {impl} random_state={seed} FAILED ({error.splitlines()[0]}):\n{_indent(error)}", flush=True)
            else:
                if result["var_names"] != selected:
                    print(f"  note: {impl} returned var_names {result['var_names']}, not the channels passed")
                try:
                    result |= evaluate(run, shapes, fg_index, pixels, row_of, n_nodes)
                except (OSError, ValueError, IndexError) as error:  # unreadable or malformed artifacts of the run
                    print(f"  {impl} random_state={seed}: its outputs could not be evaluated: {error!r}", flush=True)
                else:
                    results[impl].append(result)
                    if args.verbose:
                        print(
                            f"    {impl} random_state={seed}: {result['seconds']:.2f} s, peak RSS "
                            f"{result['peak_rss_gb']:.2f} GB, QE {result['qe']:.5f}, node=NN {result['node_nn']:.2%}",
                            flush=True,
                        )
            shutil.rmtree(run)
    del pixels, row_of
    shutil.rmtree(data)

    if not ari_checked:
        maps = [r["map"] for rs in results.values() for r in rs][:2]
        if len(maps) == 2:
            from sklearn.metrics import adjusted_rand_score

            ari_checked.append(abs(ari(*maps) - adjusted_rand_score(*maps)))
            print(f"  (ARI of this script against sklearn.metrics.adjusted_rand_score: |diff| {ari_checked[0]:.1e})")

    summary = {}
    harpy_maps = {kind: [r[kind] for r in results.get("harpy", [])] for kind in ("map", "map_nn")}
    print(
        f"  {'implementation':20s} {'time mean / min':>16s}  {'peak RSS (+call)':>17s}  {'QE (mean +- sd)':>17s}  "
        f"{'seed ARI':>8s}  {'vs harpy':>8s}  {'node=NN':>8s}  {'meta=map':>8s}  {'bg':>3s}  runs"
    )
    for impl, rs in results.items():
        if not rs:
            print(f"  {impl:20s} all runs failed")
            continue
        t = np.array([r["seconds"] for r in rs])
        qe = np.array([r["qe"] for r in rs])
        s = {
            "mean": t.mean(),
            "min": t.min(),
            "peak": max(r["peak_rss_gb"] for r in rs),
            "call": max(r["call_rss_gb"] for r in rs),
            "qe": qe.mean(),
            "qe_var_of_mean": qe.var(ddof=1) / len(qe) if len(qe) > 1 else float("nan"),
            "correct": all(r["node_nn"] == 1 and r["meta_map"] == 1 and r["bg_mismatch"] == 0 for r in rs),
        }
        for kind, suffix in (("map", ""), ("map_nn", "_nn")):
            maps = [r[kind] for r in rs]
            s["seed_ari" + suffix] = _mean_pairwise(maps)
            if impl == "harpy":
                s["vs_harpy" + suffix] = s["seed_ari" + suffix]
            else:
                s["vs_harpy" + suffix] = _mean_pairwise(maps, harpy_maps[kind]) if harpy_maps[kind] else float("nan")
        summary[impl] = s
        print(
            f"  {impl:20s} {s['mean']:7.2f} / {s['min']:5.2f} s  {s['peak']:5.2f} GB (+{s['call']:4.2f})  "
            f"{s['qe']:.5f} +- {qe.std():.5f}  {s['seed_ari']:8.3f}  {s['vs_harpy']:8.3f}  "
            f"{np.mean([r['node_nn'] for r in rs]):8.2%}  {np.mean([r['meta_map'] for r in rs]):8.2%}  "
            f"{sum(r['bg_mismatch'] for r in rs):3d}  {len(rs)}/{args.seeds}",
            flush=True,
        )
    print(
        "  maps the returned models imply (mapping[float64 nearest node] at every non-background pixel; what correct "
        "labels are):"
    )
    for impl, s in summary.items():
        print(f"    {impl:20s} seed ARI {s['seed_ari_nn']:.3f}, vs harpy {s['vs_harpy_nn']:.3f}")
    print("  check of the quality computation, on the returned samples (means over seeds):")
    for impl, rs in results.items():
        if not rs:
            continue
        qe_s = np.mean([r["sample_qe"] for r in rs])
        bmu = np.mean([r["sample_bmu"] for r in rs])
        print(
            f"    {impl:20s} {np.mean([r['n_sampled'] for r in rs]):9.0f} sampled pixels: QE of this script "
            f"{qe_s:.5f}, mean distance_to_bmu {bmu:.5f} (rel. diff {abs(qe_s - bmu) / bmu:.1e}); max |sample "
            f"value - image| {max(r['sample_value_error'] for r in rs):.1e}; labels {'/'.join(rs[0]['label_dtypes'])}"
            f"{'' if all(r['mapping_ok'] for r in rs) else '; MAPPING INDEX NOT 1..n_nodes'}; {rs[0]['model']}"
        )

    if "harpy" not in summary:
        print("  summary: no harpy run succeeded; no quality bar or speed-up")
        return None
    h = summary["harpy"]
    print(
        f"  summary (bar: QE <= harpy's {h['qe']:.5f} and seed ARI >= harpy's {h['seed_ari']:.3f} - "
        f"{QUALITY_ARI_SLACK}; harpy's labels {'are' if h['correct'] else 'are NOT'} the nearest nodes; load average "
        f"now {os.getloadavg()[0]:.1f}):"
    )
    for impl, s in summary.items():
        if impl == "harpy":
            continue
        print(
            f"    {impl:20s} {_bar(s, h, '')}; speed-up x{h['mean'] / s['mean']:.1f} (mean), "
            f"x{h['min'] / s['min']:.1f} (min); peak RSS ratio {s['peak'] / h['peak']:.2f}, call RSS ratio "
            f"{s['call'] / h['call']:.2f}",
            flush=True,
        )
        if not s["correct"]:
            print(
                f"    {'':20s} its labels are wrong (node=NN, meta=map or bg); with the labels its models imply: "
                f"{_bar(s, h, '_nn')}"
            )
    if "pixelflowsom" not in summary:
        print("    the default (pixelflowsom, no som) did not run: no speed-up against the target", flush=True)
        return None
    speed_up = h["mean"] / summary["pixelflowsom"]["mean"]
    print(f"    {_target(speed_up)}", flush=True)
    return speed_up


def _target(speed_up: float) -> str:
    verdict = "MET" if speed_up >= SPEED_UP_TARGET else "MISSED"
    return (
        f"speed-up of the default (pixelflowsom, no som) over harpy: x{speed_up:.1f} (mean time ratio; target "
        f">= {SPEED_UP_TARGET:g}x): {verdict}"
    )


def _bar(s: dict, h: dict, suffix: str) -> str:
    """The quality bar's verdict for the summary ``s`` of an implementation against harpy's ``h``.

    The QE difference is also given in standard errors of the difference of the two means over seeds: within about
    2 of them, "QE <= harpy's" is decided by the seeds' noise.
    """
    qe_ok = s["qe"] <= h["qe"]
    ari_ok = s["seed_ari" + suffix] >= h["seed_ari" + suffix] - QUALITY_ARI_SLACK
    se = np.sqrt(s["qe_var_of_mean"] + h["qe_var_of_mean"])
    return (
        f"{'MEETS the bar' if qe_ok and ari_ok else 'misses the bar'} (QE {s['qe'] / h['qe'] - 1:+.2%} = "
        f"{(s['qe'] - h['qe']) / se:+.1f} se {'ok' if qe_ok else 'NO'}, seed ARI "
        f"{s['seed_ari' + suffix] - h['seed_ari' + suffix]:+.3f} {'ok' if ari_ok else 'NO'})"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", choices=list(IMAGES), default=["mibi", "codex", "cohort"])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds: random_state = 0 .. seeds-1")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds")
    parser.add_argument("--verbose", action="store_true", help="print every run's figures as it finishes")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--n-clusters", type=int, default=12)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--grid", type=int, default=10, help="xdim = ydim")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the .npz images")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a child is abandoned")
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "DATA", "RUN", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, data, run, seed = args.child
        result = child(impl, Path(data), Path(run), int(seed), args.n_clusters, args.fraction, args.grid)
        print(json.dumps(result))
        return
    if args.quick:
        args.seeds = min(args.seeds, 2)

    with tempfile.TemporaryDirectory(prefix="pixelflowsom-bench-real-") as tmp:
        # This process and the children compile numba functions into the temporary directory, not the packages'.
        os.environ["NUMBA_CACHE_DIR"] = str(Path(tmp) / "numba-cache")
        import flowsom
        import harpy

        import pixelflowsom

        print(
            f"harpy-analysis {version('harpy-analysis')} ({Path(harpy.__file__).parent}), flowsom "
            f"{flowsom.__version__}, pixelflowsom {pixelflowsom.__version__} ({Path(pixelflowsom.__file__).parent}); "
            f"{os.cpu_count()} cores"
        )
        env = dict(os.environ)
        ari_checked = []
        speed_ups = {name: bench_image(name, args, Path(tmp), env, ari_checked) for name in args.images}
    print("\ntargets:")
    for name, speed_up in speed_ups.items():
        verdict = _target(speed_up) if speed_up is not None else "no speed-up (harpy or the default failed)"
        print(f"  {name:12s} {verdict}")


if __name__ == "__main__":
    main()
