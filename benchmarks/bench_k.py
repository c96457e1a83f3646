"""Choosing the number of metaclusters (``n_clusters="auto"``): every candidate criterion against known truth and seeds.

1. **Synthetic family** (``pixelflowsom._synthetic.synthetic_family``, ``--cases`` cases, default 80, family seed
   ``--family-seed``): seeded 256 x 256 images with 3-12 phenotypes, 8-40 channels, noise 0.1-0.4, equal / Zipf /
   rare (1.5 % of the cells) phenotype sizes, with or without shared lineage markers. Every case is fitted once,
   ``PixelFlowSOM(n_clusters="auto", xdim=10, ydim=10, fraction=0.2, random_state=<case seed>)``; the codes and the
   training pixels per node (``training_sample``, the weights ``fit`` passes to ``choose_n_clusters``) then go to
   every criterion. The metaclustering at every ``k`` is labelled on every pixel (nearest node, then the node's
   metacluster) and compared with the truth.

   *Separable*: with ``n_clusters`` = truth, the metaclustering recovers the phenotypes: adjusted Rand index (ARI)
   >= 0.9 against the truth, and in the best one-to-one matching of phenotypes and metaclusters (Hungarian) every
   phenotype keeps at least half of its pixels in its own metacluster (so a rare phenotype absorbed into another one
   does not count as recovered, whatever the ARI). A case that is not separable gets its reason: ``overlap`` (no
   ``k <= max_clusters`` reaches ARI 0.9: the profiles overlap at that noise), else what takes the truth's slots at
   ``k`` = truth: ``empty nodes`` (a metacluster of SOM nodes without training pixels, which the SOM places between
   well separated phenotypes), ``outlier nodes`` (a metacluster of under 1 % of the pixels that is no phenotype: the
   bright tail of one), ``split`` (a phenotype over two metaclusters), and what is lost: ``rare absorbed`` (a
   phenotype of under 2 % of the pixels merged into another) or ``merged``; with the smallest ``k`` that separates.
   Besides the hit rate on the separable cases (chosen ``k`` = truth), the summary counts, over every case that some
   ``k <= max_clusters`` recovers in that sense, how often the chosen ``k`` is one that recovers it.

2. **Real images** (``../shared/realdata``, see its README): the MIBI field of view (12 lineage channels) and the CODEX
   crop (22), preprocessed as users do (``PixelPreprocessor(channels=lineage)``, harpy's defaults; lineage channels as
   ``bench_real.py``'s ``LINEAGE_GROUPS``), fitted with ``fraction=0.1`` and ``random_state`` = 0 .. seeds - 1. No
   truth: the chosen ``k`` per seed and its span over the seeds.

3. **Cost**: on every real image and seed, fits with ``n_clusters="auto"`` and with ``n_clusters`` fixed to the
   ``k`` it chose, interleaved, ``--repeats`` times each; the median seconds of each and the overhead of "auto".

Criteria (all on the SOM codes, nodes weighted by their training pixels; ``k = 1 .. max_clusters``):

- ``knee``: ``choose_n_clusters(method="knee")``, the default of ``"auto"``: Kneedle on the log of the
  pixel-weighted within-cluster sum of squares (WSS);
- ``elbow``: R FlowSOM's elbow (``method="elbow"``), pixel-weighted, the former default;
- ``kneedle (WSS)``: the same Kneedle rule on the WSS itself (not its log);
- ``elbow (log WSS)``: R FlowSOM's two-line elbow on the log of the WSS;
- ``CH``: the largest Calinski-Harabasz index, ``(B / (k - 1)) / (W / (N - k))`` with pixel weights (``N`` pixels);
- ``silhouette``: the largest pixel-weighted mean silhouette of the codes;
- ``gap``: the gap statistic (Tibshirani et al. 2001), pixel-weighted log WSS against 10 uniform references in the
  principal-component box of the codes clustered the same way, the smallest ``k`` with ``gap(k) >= gap(k + 1) -
  s(k + 1)``;
- ``stability``: 20 resamples of 90 % of the codes clustered again; the largest ``k`` whose mean pixel-weighted ARI
  between the resample's and the full clustering (on the resampled codes) is at least 0.9;
- with ``--consensus`` (default on), ``ConsensusClustering(n_resamples=100)`` as the metaclustering, with its own
  separability: ``delta_area`` (the consensus rule) and ``knee`` on its final clusterings.

``--linkage ward`` runs everything with ``AgglomerativeClustering(linkage="ward")`` as the metaclustering instead of
``flowsom``'s average linkage.

Run from ``benchmarks/``: ``python bench_k.py`` (about 3 minutes on 2 cores; ``--cases 20 --no-real`` for a quick
look).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
REAL = {"mibi": "mibi_her2_fov8.npz", "codex": "codex_crop501.npz"}
SEPARABLE_ARI = 0.9
KEPT = 0.5  # every phenotype keeps at least half its pixels in its matched metacluster


# ----------------------------------------------------------------------------------------------------- criteria


def ari_from_table(table):
    """Adjusted Rand index from a contingency table (rows: truth, columns: clusters) of counts."""
    table = np.asarray(table, dtype=np.float64)

    def pairs(x):
        return float(np.sum(x * (x - 1) / 2))

    total = pairs(np.array([table.sum()]))
    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / total if total else 0.0
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


def wss_curve(codes, labels_by_k, weight):
    from pixelflowsom._metacluster import _within_cluster_sum_of_squares

    return np.array([_within_cluster_sum_of_squares(codes, labels_by_k[k], weight) for k in sorted(labels_by_k)])


def calinski_harabasz(wss, n):
    k = np.arange(1, len(wss) + 1)
    between = wss[0] - wss
    with np.errstate(divide="ignore", invalid="ignore"):
        ch = (between / (k - 1)) / (wss / (n - k))
    ch[0] = np.nan
    return int(np.nanargmax(ch)) + 1


def weighted_silhouette(codes, labels, weight):
    from scipy.spatial.distance import cdist

    distance = cdist(codes, codes)
    clusters = np.unique(labels)
    mass = np.array([weight[labels == c].sum() for c in clusters])
    mean = np.stack(
        [
            (distance[:, labels == c] * weight[labels == c]).sum(1) / max(m, 1e-300)
            for c, m in zip(clusters, mass, strict=True)
        ],
        1,
    )
    own = np.searchsorted(clusters, labels)
    a = mean[np.arange(len(labels)), own]
    other = mean.copy()
    other[np.arange(len(labels)), own] = np.inf
    other[:, mass <= 0] = np.inf
    b = other.min(1)
    s = np.where(np.isfinite(b), (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
    return float((s * weight).sum() / weight.sum())


def tree_labels(codes, linkage, max_clusters):
    """Labels at k = 1 .. max_clusters of a scipy tree (for the references and resamples of gap and stability)."""
    from scipy.cluster.hierarchy import cut_tree
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    cuts = cut_tree(scipy_linkage(codes, method=linkage), n_clusters=range(1, max_clusters + 1))
    return {k: cuts[:, k - 1] for k in range(1, max_clusters + 1)}


def gap_statistic(codes, weight, wss, linkage, max_clusters, n_references=10, seed=0):
    rng = np.random.default_rng(seed)
    mean = (codes * weight[:, None]).sum(0) / weight.sum()
    _, _, vt = np.linalg.svd(codes - mean, full_matrices=False)
    rotated = (codes - mean) @ vt.T
    low, high = rotated.min(0), rotated.max(0)
    reference = []
    for _ in range(n_references):
        fake = rng.uniform(low, high, size=rotated.shape) @ vt + mean
        fake_weight = rng.permutation(weight)
        reference.append(np.log(wss_curve(fake, tree_labels(fake, linkage, max_clusters), fake_weight) + 1e-300))
    reference = np.array(reference)
    gap = reference.mean(0) - np.log(wss + 1e-300)
    spread = reference.std(0) * np.sqrt(1 + 1 / n_references)
    for k in range(1, max_clusters):
        if gap[k - 1] >= gap[k] - spread[k]:
            return k
    return max_clusters


def weighted_ari(a, b, weight):
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), weight)
    return ari_from_table(table)


def resample_stability(codes, weight, labels_by_k, linkage, max_clusters, n_resamples=20, threshold=0.9, seed=0):
    rng = np.random.default_rng(seed)
    n = len(codes)
    agreement = np.zeros(max_clusters)
    for _ in range(n_resamples):
        idx = np.sort(rng.choice(n, size=max(max_clusters, int(0.9 * n)), replace=False))
        sub = tree_labels(codes[idx], linkage, max_clusters)
        for k in range(2, max_clusters + 1):
            agreement[k - 1] += weighted_ari(labels_by_k[k][idx], sub[k], weight[idx]) / n_resamples
    stable = [k for k in range(2, max_clusters + 1) if agreement[k - 1] >= threshold]
    return max(stable) if stable else 2


def knee_of(y):
    from pixelflowsom._metacluster import _first_minimum

    x = np.arange(len(y)) / (len(y) - 1)
    distance = (1 - x) - (y - y[-1]) / (y[0] - y[-1])
    inner = np.full(len(y), np.nan)
    inner[1:-1] = -distance[1:-1]
    return _first_minimum(inner)


def all_criteria(codes, weight, labels_by_k, metaclustering, linkage, max_clusters):
    """Chosen k of every candidate criterion for one set of codes (the default metaclustering's family)."""
    from pixelflowsom._metacluster import _first_minimum, _two_line_residuals, choose_n_clusters

    wss = wss_curve(codes, labels_by_k, weight)
    log_wss = np.log(np.maximum(wss, 1e-9 * wss[0]))
    kw = {"max_clusters": max_clusters, "sample_weight": weight, "n_resamples": 0}
    silhouettes = [weighted_silhouette(codes, labels_by_k[k], weight) for k in range(2, max_clusters + 1)]
    return {
        "knee": choose_n_clusters(codes, metaclustering, method="knee", **kw).n_clusters,
        "elbow": choose_n_clusters(codes, metaclustering, method="elbow", **kw).n_clusters,
        "kneedle (WSS)": knee_of(wss),
        "elbow (log WSS)": _first_minimum(_two_line_residuals(log_wss)),
        "CH": calinski_harabasz(wss, weight.sum()),
        "silhouette": int(np.argmax(silhouettes)) + 2,
        "gap": gap_statistic(codes, weight, wss, linkage, max_clusters),
        "stability": resample_stability(codes, weight, labels_by_k, linkage, max_clusters),
    }


def consensus_criteria(codes, weight, max_clusters, seed):
    from pixelflowsom import ConsensusClustering, choose_n_clusters

    model = ConsensusClustering(n_resamples=100, random_state=seed)
    kw = {"max_clusters": max_clusters, "sample_weight": weight}
    area = choose_n_clusters(codes, model, method="delta_area", **kw)
    knee = choose_n_clusters(codes, model, method="knee", **kw)
    return {"delta_area": area.n_clusters, "knee": knee.n_clusters}


# ------------------------------------------------------------------------------------------------- separability


def separability(tables, truth_k, node_weight_by_k, n_pixels, phenotype_pixels):
    """``(separable, reason)`` from the phenotype x metacluster pixel tables of every k (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    def recovered(table):
        # every phenotype matched to a metacluster of its own (so k >= the number of phenotypes)
        rows, cols = linear_sum_assignment(-table)
        kept = table[rows, cols] / np.maximum(table.sum(1)[rows], 1)
        every = len(rows) == table.shape[0]
        return every and ari_from_table(table) >= SEPARABLE_ARI and kept.min() >= KEPT, rows, cols, kept

    recovering = {k for k in tables if recovered(tables[k])[0]}
    ok, rows, cols, kept = recovered(tables[truth_k])
    if ok:
        return True, "", recovering
    if max(ari_from_table(t) for t in tables.values()) < SEPARABLE_ARI:
        return False, "overlap", recovering
    table = tables[truth_k]
    matched = set(cols[kept >= KEPT])
    what = []
    if np.any(node_weight_by_k[truth_k] == 0):
        what.append("empty nodes")
    small = [c for c in range(truth_k) if c not in matched and table[:, c].sum() < 0.01 * n_pixels]
    if small and not np.all(node_weight_by_k[truth_k][small] == 0):
        what.append("outlier nodes")
    share = table / np.maximum(table.sum(1, keepdims=True), 1)
    if np.any((share >= 0.25).sum(1) >= 2):
        what.append("split")
    lost = np.setdiff1d(np.arange(table.shape[0]), rows[kept >= KEPT])
    if len(lost):
        what.append("rare absorbed" if phenotype_pixels[lost].min() < 0.02 * n_pixels else "merged")
    needs = f"; separable at k = {min(recovering)}" if recovering else ""
    return False, ", ".join(what) + needs, recovering


# ----------------------------------------------------------------------------------------------------------- runs


def metaclustering_of(linkage):
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(linkage=linkage)


def node_counts(model, image):
    from pixelflowsom._nearest import nearest_nodes

    nodes = nearest_nodes(model.training_sample(image).values, model.codes_)
    return np.bincount(nodes[nodes >= 0], minlength=model.codes_.shape[0]).astype(np.float64)


def labels_at_every_k(codes, metaclustering, max_clusters):
    from sklearn.base import clone

    out = {1: np.zeros(len(codes), dtype=np.int64)}
    for k in range(2, max_clusters + 1):
        out[k] = clone(metaclustering).set_params(n_clusters=k).fit_predict(codes)
    return out


def consensus_labels_at_every_k(codes, max_clusters, seed):
    from pixelflowsom import ConsensusClustering
    from pixelflowsom._metacluster import _consensus_final_labels, _consensus_fractions

    model = ConsensusClustering(n_resamples=100, random_state=seed)
    fractions = _consensus_fractions(codes, max_clusters, model)
    out = {1: np.zeros(len(codes), dtype=np.int64)}
    out.update((k, _consensus_final_labels(fractions[k], k, model.linkage)) for k in range(2, max_clusters + 1))
    return out


def truth_tables(labels_by_k, node_table):
    """Phenotype x metacluster pixel tables at every k from the phenotype x node table."""
    return {
        k: np.stack([node_table[:, labels == c].sum(1) for c in range(labels.max() + 1)], 1)
        for k, labels in labels_by_k.items()
        if k >= 2
    }


def run_family(args):
    from pixelflowsom import PixelFlowSOM
    from pixelflowsom._nearest import nearest_nodes
    from pixelflowsom._synthetic import make_synthetic_image, synthetic_family

    metaclustering = metaclustering_of(args.linkage)
    rows = []
    for case in synthetic_family(args.cases, shape=(args.size, args.size), seed=args.family_seed):
        params = case["params"]
        image, truth = make_synthetic_image(**params)
        model = PixelFlowSOM(
            n_clusters="auto",
            fraction=args.fraction,
            max_clusters=args.max_clusters,
            metaclustering=metaclustering,
            random_state=params["seed"],
        ).fit(image)
        codes, weight = model.codes_, node_counts(model, image)
        pixels = image.values.reshape(image.shape[0], -1).T
        nodes = nearest_nodes(pixels, codes)
        node_table = np.zeros((case["n_phenotypes"], len(codes)))
        np.add.at(node_table, (truth.ravel(), nodes), 1)
        phenotype_pixels = node_table.sum(1)
        row = {"case": case, "auto": model.n_clusters_}
        for family, labels_by_k in (("default", labels_at_every_k(codes, metaclustering, args.max_clusters)),) + (
            (("consensus", consensus_labels_at_every_k(codes, args.max_clusters, params["seed"])),)
            if args.consensus
            else ()
        ):
            tables = truth_tables(labels_by_k, node_table)
            weights = {
                k: np.bincount(labels, weights=weight, minlength=labels.max() + 1) for k, labels in labels_by_k.items()
            }
            separable, reason, recovering = separability(
                tables, case["n_phenotypes"], weights, truth.size, phenotype_pixels
            )
            if family == "default":
                chosen = all_criteria(codes, weight, labels_by_k, metaclustering, args.linkage, args.max_clusters)
            else:
                chosen = consensus_criteria(codes, weight, args.max_clusters, params["seed"])
            aris = {name: ari_from_table(tables[k]) if k >= 2 else 0.0 for name, k in chosen.items()}
            row[family] = {
                "separable": separable,
                "reason": reason,
                "recovering": recovering,
                "chosen": chosen,
                "ari": aris,
            }
        rows.append(row)
        default = row["default"]
        mark = "sep" if default["separable"] else "   "
        picks = " ".join(f"{k:>2}" for k in default["chosen"].values())
        extra = ""
        if args.consensus:
            c = row["consensus"]
            extra = f" | consensus {'sep' if c['separable'] else '   '} " + " ".join(
                f"{k:>2}" for k in c["chosen"].values()
            )
        print(f"{case['name']:<62} truth {case['n_phenotypes']:>2} {mark} {picks}{extra}  {default['reason']}")
    return rows


def summarize_family(rows, consensus):
    families = ["default"] + (["consensus"] if consensus else [])
    for family in families:
        separable = [r for r in rows if r[family]["separable"]]
        print(f"\n{family} metaclustering: {len(separable)} of {len(rows)} cases separable")
        names = list(rows[0][family]["chosen"])
        for name in names:
            hits = sum(r[family]["chosen"][name] == r["case"]["n_phenotypes"] for r in separable)
            off = sum(abs(r[family]["chosen"][name] - r["case"]["n_phenotypes"]) <= 1 for r in separable)
            ari = np.mean([r[family]["ari"][name] for r in separable]) if separable else np.nan
            misses = [
                f"{r['case']['name'][:2]}:{r['case']['n_phenotypes']}->{r[family]['chosen'][name]}"
                for r in separable
                if r[family]["chosen"][name] != r["case"]["n_phenotypes"]
            ]
            print(
                f"  {name:<16} k = truth {hits:>2}/{len(separable)} ({100 * hits / max(len(separable), 1):5.1f} %)"
                f"  within 1: {off:>2}  mean ARI at chosen k {ari:.3f}  misses {' '.join(misses)}"
            )
        recoverable = [r for r in rows if r[family]["recovering"]]
        print(
            f"  every case where some k <= max_clusters recovers every phenotype ({len(recoverable)} of {len(rows)}): "
            "how often the chosen k is such a k"
        )
        for name in names:
            good = sum(r[family]["chosen"][name] in r[family]["recovering"] for r in recoverable)
            print(f"  {name:<16} {good:>2}/{len(recoverable)} ({100 * good / max(len(recoverable), 1):5.1f} %)")
        reasons = {}
        for r in rows:
            if not r[family]["separable"]:
                key = r[family]["reason"].split(";")[0]
                reasons[key] = reasons.get(key, 0) + 1
        print(f"  not separable, by reason: {reasons}")


def load_real(name):
    import xarray as xr
    from bench_real import LINEAGE  # benchmarks/bench_real.py (scripts run from their folder)

    from pixelflowsom import PixelPreprocessor

    archive = np.load(DATA / REAL[name])
    image = xr.DataArray(archive["img0"], dims=("c", "y", "x"), coords={"c": [str(c) for c in archive["channels"]]})
    return PixelPreprocessor(channels=LINEAGE[name]).fit_transform(image)


def run_real(args):
    from pixelflowsom import PixelFlowSOM, choose_n_clusters

    metaclustering = metaclustering_of(args.linkage)
    costs = []
    for name in REAL:
        image = load_real(name)
        chosen, stability = {}, []
        for seed in range(args.seeds):
            common = {
                "fraction": 0.1,
                "max_clusters": args.max_clusters,
                "metaclustering": metaclustering,
                "random_state": seed,
            }
            model = PixelFlowSOM(n_clusters="auto", **common).fit(image)
            codes, weight = model.codes_, node_counts(model, image)
            labels_by_k = labels_at_every_k(codes, metaclustering, args.max_clusters)
            picks = all_criteria(codes, weight, labels_by_k, metaclustering, args.linkage, args.max_clusters)
            if args.consensus:
                picks.update({f"consensus {k}": v for k, v in consensus_criteria(codes, weight, 20, seed).items()})
            for criterion, k in picks.items():
                chosen.setdefault(criterion, []).append(k)
            choice = model.n_clusters_choice_
            if choice.stability is not None:
                stability.append(float(choice.stability[choice.n_clusters]))
            # cost: auto against the k it chose, fixed, interleaved
            times = {"auto": [], "fixed": []}
            for _ in range(args.repeats):
                for mode, n_clusters in (("auto", "auto"), ("fixed", model.n_clusters_)):
                    start = time.perf_counter()
                    PixelFlowSOM(n_clusters=n_clusters, **common).fit(image)
                    times[mode].append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(10):
                choose_n_clusters(codes, metaclustering, max_clusters=args.max_clusters, sample_weight=weight)
            criterion_ms = (time.perf_counter() - start) / 10 * 1e3
            costs.append((name, seed, np.median(times["auto"]), np.median(times["fixed"]), criterion_ms, times))
        print(f"\n{name}: chosen k per seed 0..{args.seeds - 1} (span: distinct values, max - min)")
        for criterion, ks in chosen.items():
            print(
                f"  {criterion:<22} {' '.join(f'{k:>2}' for k in ks)}   "
                f"{len(set(ks))} values, range {max(ks) - min(ks)}"
            )
        if stability:
            print(f"  default 'auto': fraction of resamples choosing its k, per seed: {np.round(stability, 2)}")
    print("\ncost of n_clusters='auto' (median of the repeats; fixed = the k auto chose)")
    for name, seed, auto, fixed, criterion_ms, _ in costs:
        print(
            f"  {name:<6} seed {seed}: auto {auto:.3f} s, fixed {fixed:.3f} s, "
            f"overhead {100 * (auto / fixed - 1):+5.1f} %"
            f"   choose_n_clusters alone {criterion_ms:.1f} ms ({100 * criterion_ms / 1e3 / fixed:.1f} % of the fit)"
        )
    for name in REAL:
        auto = sum(c[2] for c in costs if c[0] == name)
        fixed = sum(c[3] for c in costs if c[0] == name)
        best_auto = sum(min(c[5]["auto"]) for c in costs if c[0] == name)
        best_fixed = sum(min(c[5]["fixed"]) for c in costs if c[0] == name)
        criterion_s = sum(c[4] for c in costs if c[0] == name) / 1e3
        print(
            f"  {name:<6} all seeds: auto / fixed = {auto / fixed:.3f} (medians), {best_auto / best_fixed:.3f} "
            f"(minima); choose_n_clusters = {100 * criterion_s / fixed:.1f} % of the fixed fits"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=80)
    parser.add_argument("--family-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--max-clusters", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--linkage", default="average", choices=["average", "ward", "complete"])
    parser.add_argument("--no-consensus", dest="consensus", action="store_false")
    parser.add_argument("--no-real", dest="real", action="store_false")
    parser.add_argument("--no-family", dest="family", action="store_false")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.family:
        print(
            "case | truth | separable? | chosen k: knee elbow kneedle(WSS) elbow(logWSS) CH silhouette gap stability"
            + (" | consensus: separable? delta_area knee" if args.consensus else "")
            + " | why not separable"
        )
        rows = run_family(args)
        summarize_family(rows, args.consensus)
    if args.real:
        run_real(args)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
