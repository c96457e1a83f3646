"""pixelflowsom.report: the self-contained HTML report of a run, its numbers and its errors."""

import base64
import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel, Labels2DModel

from pixelflowsom import pl, sample_pixels
from pixelflowsom._cli import main
from pixelflowsom._images import full_resolution
from pixelflowsom._report import (
    DRIFT_EPS_FRACTION,
    DRIFT_THRESHOLD,
    MAD_SCALE,
    ReportData,
    report,
    report_data,
)

FOVS = [f"fov{i}" for i in range(4)]
DRIFTING = "fov2"
N_SAMPLES = 20_000
PNG = b"\x89PNG\r\n\x1a\n"


def _images(n=4):
    from pixelflowsom._synthetic import make_synthetic_image

    images = {}
    for i in range(n):
        image, _ = make_synthetic_image((128, 128), n_channels=8, n_phenotypes=4, seed=i, layout_seed=i)
        data = image.data * (2.0 if f"fov{i}" == DRIFTING else 1.0)
        channels = [str(c) for c in image.coords["c"].values]
        images[f"fov{i}"] = Image2DModel.parse(
            data, dims=("c", "y", "x"), c_coords=channels, chunks={"c": 8, "y": 64, "x": 48}
        )  # several chunks per FOV: the labels too
    return images


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A store of 4 FOVs (fov2 twice as bright), clustered by the command line into 4 metaclusters."""
    store = tmp_path_factory.mktemp("report") / "cohort.zarr"
    sd.SpatialData(images=_images()).write(store)
    argv = ["cluster", str(store), *(a for fov in FOVS for a in ("--image", fov))]
    assert main([*argv, "--n-clusters", "4", "--quiet", "--no-report"]) == 0
    return store


@pytest.fixture(scope="module")
def html(cohort):
    path = report(cohort, FOVS, n_samples=N_SAMPLES)
    return path, path.read_text(encoding="utf-8")


def test_report_written_next_to_the_store(cohort, html):
    path, _ = html
    assert path == cohort.parent / "cohort_report.html"
    assert path.is_file()
    assert not [p for p in cohort.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_report_is_self_contained(html):
    _, text = html
    assert re.search(r"<title>\s*pixelflowsom report", text)
    lowered = text.lower()
    for forbidden in ("http://", "https://", "<script", 'src="http', "<link", "@import", "url("):
        assert forbidden not in lowered
    sources = re.findall(r'<img\s+src="([^"]*)"\s+alt="([^"]+)"', text)
    assert len(sources) == text.count("<img")
    assert len(sources) >= 4 + 5  # 4 FOV images, 2 heatmaps, SOM grid, proportions, drift
    for source, _ in sources:
        assert source.startswith("data:image/png;base64,")
        png = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert png.startswith(PNG)
        assert plt.imread(io.BytesIO(png)).ndim == 3


def test_only_the_drifting_fov_is_flagged(html):
    _, text = html
    rows = dict(re.findall(r'<tr class="fov" data-fov="([^"]+)" data-drift="(true|false)"', text))
    assert rows == {fov: "true" if fov == DRIFTING else "false" for fov in FOVS}
    flags = re.search(r'<p id="drift-flags"[^>]*>(.*?)</p>', text, re.S).group(1)
    assert DRIFTING in flags
    assert not [fov for fov in FOVS if fov != DRIFTING and fov in flags]


def test_report_shows_the_run(html):
    _, text = html
    assert "pixelflowsom cluster" in re.search(r'<pre id="command">(.*?)</pre>', text, re.S).group(1)
    for what in ("quantization error", "training pixels", "Seconds per phase", "Versions", "scikit-learn"):
        assert what in text


def test_report_data_against_references(cohort):
    data = report_data(cohort, FOVS, n_samples=N_SAMPLES, random_state=0)
    assert isinstance(data, ReportData)
    sdata = sd.read_zarr(cohort)
    # Counts: np.bincount of every labels element.
    for i, fov in enumerate(FOVS):
        meta = np.asarray(sdata.labels[f"{fov}_metaclusters"].data).ravel()
        nodes = np.asarray(sdata.labels[f"{fov}_som_clusters"].data).ravel()
        np.testing.assert_array_equal(data.counts[i], np.bincount(meta, minlength=data.counts.shape[1]))
        np.testing.assert_array_equal(data.node_counts[i], np.bincount(nodes, minlength=data.node_counts.shape[1]))
    # Medians: the same draw by sample_pixels, labelled pixels only, np.median per FOV.
    images = [full_resolution(sdata.images[fov]) for fov in FOVS]
    sample = sample_pixels(images, n_samples=N_SAMPLES, channels=data.channels, random_state=0)
    np.testing.assert_array_equal(data.sample_values, sample.values)
    medians = np.empty((len(FOVS), len(data.channels)))
    for i, (fov, coords) in enumerate(zip(FOVS, sample.coords_by_image(), strict=True)):
        labels = np.asarray(sdata.labels[f"{fov}_metaclusters"].data)[coords[:, 0], coords[:, 1]]
        np.testing.assert_array_equal(data.sample_metaclusters[sample.image_index == i], labels)
        medians[i] = np.median(sample.values[sample.image_index == i][labels > 0], axis=0)
    np.testing.assert_allclose(data.fov_medians, medians, rtol=1e-12)
    # Robust z by the plain formula.
    eps = DRIFT_EPS_FRACTION * medians.max(axis=0)
    v = np.log(medians + eps)
    mad = np.median(np.abs(v - np.median(v, axis=0)), axis=0)
    z = (v - np.median(v, axis=0)) / np.maximum(MAD_SCALE * mad, np.log(1.1))
    np.testing.assert_allclose(data.drift_z, z, rtol=1e-10, atol=1e-12)
    assert data.drift_checked
    np.testing.assert_array_equal(data.drifting, (np.abs(z) > DRIFT_THRESHOLD).any(axis=1))
    assert [fov for fov, drifts in zip(FOVS, data.drifting, strict=True) if drifts] == [DRIFTING]


def test_report_counts_in_the_page(cohort, html):
    _, text = html
    sdata = sd.read_zarr(cohort)
    total = sum(np.bincount(np.asarray(sdata.labels[f"{fov}_metaclusters"].data).ravel(), minlength=5) for fov in FOVS)
    rows = re.findall(
        r'data-metacluster="(\d+)"><td class="num">\d+</td><td>.*?</td><td>.*?</td><td class="num">(\d+)', text
    )
    assert {int(k): int(n) for k, n in rows} == {k: int(total[k]) for k in range(1, len(total)) if total[k]}


def test_report_of_a_spatialdata_object_and_out(cohort, tmp_path):
    sdata = sd.read_zarr(cohort)
    out = report(sdata, FOVS[:2], out=tmp_path / "two.html", n_samples=5_000, seconds={"label": 1.25})
    text = out.read_text(encoding="utf-8")
    assert "only in cohorts of at least 3 FOVs" in text
    assert 'data-drift="true"' not in text
    assert "1.25" in text


def test_report_without_a_run_record(tmp_path):
    """Labels written by another tool (no record): the report shows what it can."""
    images = _images(3)
    rng = np.random.default_rng(0)
    labels = {}
    for fov in images:
        meta = rng.integers(1, 4, size=(128, 128)).astype(np.uint8)
        labels[f"{fov}_metaclusters"] = Labels2DModel.parse(meta, dims=("y", "x"))
        labels[f"{fov}_som_clusters"] = Labels2DModel.parse((meta * 2).astype(np.uint8), dims=("y", "x"))
    sdata = sd.SpatialData(images=images, labels=labels)
    with pytest.raises(ValueError, match="out="):
        report(sdata, list(images))
    out = report(sdata, list(images), out=tmp_path / "r.html", n_samples=3_000)
    text = out.read_text(encoding="utf-8")
    assert "records no run" in text
    assert "records no SOM grid" in text
    assert text.count('class="fov"') == 3
    assert re.search(r'<p id="drift-flags"[^>]*>.*fov2', text, re.S)


def test_report_errors(cohort, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report(tmp_path / "missing.zarr", FOVS)
    with pytest.raises(KeyError, match="nope"):
        report(cohort, ["nope"])
    with pytest.raises(KeyError, match="not found"):
        report(cohort, FOVS[:1], metacluster_labels=["fov0_som_clusters_x"])
    with pytest.raises(ValueError, match="one per image"):
        report(cohort, FOVS[:2], cluster_labels=["fov0_som_clusters"])
    with pytest.raises(ValueError, match="folder"):
        report(cohort, FOVS, out=tmp_path / "no" / "r.html")
    with pytest.raises(TypeError, match="store"):
        report(42, FOVS)
    with pytest.raises(ValueError, match="more than once"):
        report(cohort, ["fov0", "fov0"])
    assert not list(tmp_path.iterdir())


def test_pl_cohort_plots():
    fig = pl.metacluster_proportions(np.array([[9, 3, 1], [0, 0, 4]]), ["a", "b"], names={1: "tumour"})
    heights = [[float(b.get_height()) for b in c] for c in fig.axes[0].containers]
    assert heights == [[0.75, 0.0], [0.25, 1.0]]
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "metacluster 1 tumour"
    plt.close(fig)
    fig = pl.drift_heatmap([[0.0, 4.0], [1.0, np.nan]], ["a", "b"], ["x", "y"], flagged=[True, False], threshold=3.5)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a (drift)", "b"]
    assert len(fig.axes[0].patches) == 1  # the one cell beyond the threshold
    plt.close(fig)
    fig = pl.som_grid_from_arrays(3, 2, [1, 1, 2, 2, 3, 3], sizes=np.arange(6))
    assert len(fig.axes[0].collections[0].get_paths()) == 6
    plt.close(fig)
    fig = pl.node_heatmap(np.arange(60.0).reshape(30, 2), ["a", "b"], node_metacluster=np.repeat([1, 2, 3], 10))
    assert fig.axes[0].images[0].get_array().shape == (2, 30)
    plt.close(fig)
    with pytest.raises(ValueError, match="xdim"):
        pl.som_grid_from_arrays(0, 2, [1, 1])
    with pytest.raises(ValueError, match="one row per FOV"):
        pl.metacluster_proportions([[1, 2]], ["a", "b"])
    with pytest.raises(ValueError, match="n_fovs"):
        pl.drift_heatmap([[1.0]], ["a", "b"], ["x"])
