"""The command line, as a new user runs it: demo, cluster, apply, and every error path (exit code 2, one line)."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel

from pixelflowsom import load_model, save_model
from pixelflowsom._cli import main
from pixelflowsom._synthetic import make_synthetic_image

from .conftest import image_reference


def write_store(path, seeds=(0,), channels=6, size=80, order=None, nan=True):
    """A store of synthetic images ``img0``, ...; ``order`` stores their channels in another order.

    ``nan``: six background pixels of every image are NaN.
    """
    images = {}
    for i, seed in enumerate(seeds):
        image, _ = make_synthetic_image((size, size), n_channels=channels, n_phenotypes=4, seed=seed)
        image = image.copy()
        if nan:
            image.values[:, :2, :3] = np.nan  # background pixels
        if order is not None:
            image = image.isel(c=order)
        images[f"img{i}"] = Image2DModel.parse(
            image.values, dims=("c", "y", "x"), c_coords=list(image.c.values), chunks={"c": channels, "y": 40, "x": 40}
        )
    sd.SpatialData(images=images).write(path)
    return path


def assert_labels_right(store, image, clusters, metaclusters, model):
    """The written labels equal the float64 nearest node of the saved model's codes on image.sel(c=channels)."""
    sdata = sd.read_zarr(store)
    expected = image_reference(sdata.images[image], model.codes_, model.node_metacluster_, model.channels_)
    np.testing.assert_array_equal(sdata.labels[clusters].values, expected[0])
    np.testing.assert_array_equal(sdata.labels[metaclusters].values, expected[1])


def snapshot(path):
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in Path(path).rglob("*")}


def refused(argv, capsys, target):
    """Run ``pixelflowsom ARGV``, which must exit with code 2 and leave ``target`` as it was; return its stderr."""
    before = snapshot(target)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert snapshot(target) == before
    return capsys.readouterr().err


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "sample.zarr", seeds=(0, 1))


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "96", "--channels", "6", "--phenotypes", "4"]) == 0
    text = capsys.readouterr().out
    assert "6 channels x 96 x 96 pixels, 4 known phenotypes" in text
    ari = float(text.split("against the known phenotypes: ")[1].split()[0])
    assert ari > 0.9
    store = out / "demo.zarr"
    assert str(store) in text
    labels = sd.read_zarr(store).labels
    assert set(labels) == {"tissue_som_clusters", "tissue_metaclusters"}
    for name in ("tissue_metaclusters.png", "phenotype_heatmap.png", "som_grid.png"):
        picture = out / "pictures" / name
        assert picture.stat().st_size > 1000
        assert str(picture) in text
    # Running it again replaces the demo store.
    assert main(["demo", "--out", str(out), "--size", "64", "--channels", "6", "--phenotypes", "4"]) == 0


def test_cluster_then_apply(store, tmp_path, capsys):
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "4", "--xdim", "5"]
    assert main([*argv, "--ydim", "5", "--fraction", "0.3", "--save-model", str(model_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "img0: SOM nodes -> 'img0_som_clusters', metaclusters -> 'img0_metaclusters'" in text
    model = load_model(model_path)
    for image in ("img0", "img1"):
        assert_labels_right(store, image, f"{image}_som_clusters", f"{image}_metaclusters", model)
    pictures = tmp_path / "sample_pictures"
    for name in ("img1_metaclusters.png", "phenotype_heatmap.png", "som_grid.png"):
        assert (pictures / name).stat().st_size > 1000

    other = write_store(tmp_path / "other.zarr", seeds=(0,))
    assert (
        main(["apply", str(other), "--image", "img0", "--model", str(model_path), "--metacluster-labels", "meta"]) == 0
    )
    assert_labels_right(other, "img0", "img0_som_clusters", "meta", model)


def test_cluster_channel_subset_then_apply_to_reordered_channels(store, tmp_path):
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--channels", "marker_04", "marker_01", "marker_03"]
    argv += ["--n-clusters", "3", "--save-model", str(model_path), "--quiet"]
    assert main(argv) == 0
    model = load_model(model_path)
    assert model.channels_ == ["marker_04", "marker_01", "marker_03"]
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", model)
    # A store whose image lists its channels in another order: apply selects them by name.
    reordered = write_store(tmp_path / "reordered.zarr", seeds=(0, 1), order=[5, 3, 1, 0, 4, 2])
    argv = ["apply", str(reordered), "--image", "img0", "--image", "img1", "--model", str(model_path), "--quiet"]
    assert main(argv) == 0
    for image in ("img0", "img1"):
        assert_labels_right(reordered, image, f"{image}_som_clusters", f"{image}_metaclusters", model)


def test_cluster_channels_chunks_processes(store, tmp_path):
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--channels", "marker_01", "marker_03", "marker_05"]
    argv += ["--n-clusters", "3", "--chunks", "6,32,48", "--scheduler", "processes", "--quiet"]
    assert main([*argv, "--save-model", str(model_path)]) == 0
    labels = sd.read_zarr(store)["img0_metaclusters"]
    assert labels.data.chunks == ((32, 32, 16), (48, 32))
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", load_model(model_path))


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["cluster", "--help"], ["apply", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: pixelflowsom" in capsys.readouterr().out


CLUSTER_ERRORS = [
    (["--image", "nope"], "image(s) ['nope'] not found in"),
    (["--image", "img0", "--channels", "CD3"], "['CD3'] not found in image 'img0'; available channels"),
    (["--image", "img0", "--fraction", "0"], "The 'fraction' parameter of PixelFlowSOM must be a float in the range"),
    (["--image", "img0", "--fraction", "1.5"], "parameter of PixelFlowSOM must be a float in the range (0.0, 1.0]"),
    (["--image", "img0", "--n-samples", "0"], "The 'n_samples' parameter of PixelFlowSOM must be an int in the range"),
    (["--image", "img0", "--fraction", "0.2", "--n-samples", "10"], "Pass fraction (0.2) or n_samples (10), not both:"),
    (["--image", "img0", "--n-clusters", "0"], "The 'n_clusters' parameter of PixelFlowSOM must be an int in the"),
    (["--image", "img0", "--n-clusters", "500"], "n_clusters=500 is larger than the number of SOM nodes"),
    (["--image", "img0", "--chunks", "40,40"], "--chunks 40,40 has 2 sizes; these images need 3: c,y,x"),
    (["--image", "img0", "--chunks", "big"], "--chunks 'big' must be 'auto', an int, or comma-separated ints"),
    (["--image", "img0", "--cluster-labels", "a", "b"], "--cluster-labels got 2 name(s) for 1 image(s)"),
    (["--image", "img0", "--metacluster-labels", "img1"], "Output name 'img1' is already the name of a images"),
    (["--image", "img0", "--save-model", "/nonexistent/m.skops"], "--save-model: folder '/nonexistent' does not"),
    (["--image", "img0", "--xdim", "0"], "The 'xdim' parameter of PixelFlowSOM must be an int in the range [1, inf)"),
]


@pytest.mark.parametrize(("extra", "message"), CLUSTER_ERRORS)
def test_cluster_errors_exit_2_and_leave_store(store, extra, message, capsys):
    err = refused(["cluster", str(store), *extra], capsys, store)
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("pixelflowsom cluster: error: ")


def test_existing_output_needs_overwrite(store, capsys):
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet"]) == 0
    capsys.readouterr()
    err = refused(["cluster", str(store), "--image", "img0", "--n-clusters", "3"], capsys, store)
    assert "'img0_som_clusters' already exists in sdata; pass --overwrite to replace it" in err
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "4", "--overwrite", "--quiet"]
    assert main([*argv, "--save-model", str(store.parent / "model.skops")]) == 0

    model = load_model(store.parent / "model.skops")
    assert model.n_clusters_ == 4
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", model)


def test_store_errors(tmp_path, capsys):
    for path, message in ((tmp_path / "missing.zarr", "does not exist"), (tmp_path, "is not a readable SpatialData")):
        with pytest.raises(SystemExit) as exc:
            main(["cluster", str(path), "--image", "img0"])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_apply_errors(store, tmp_path, capsys):
    model = tmp_path / "model.skops"
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--save-model", str(model)]) == 0
    capsys.readouterr()
    not_a_model = tmp_path / "junk.skops"
    save_model({"a": 1}, not_a_model)
    fewer_channels = write_store(tmp_path / "fewer.zarr", channels=4)
    cases = [
        ([str(store), "--image", "img1", "--model", str(tmp_path / "none.skops")], "does not exist"),
        (
            [str(store), "--image", "img1", "--model", str(not_a_model)],
            "is not a PixelFlowSOM fitted on images, nor a Pipeline ending in one",
        ),
        ([str(store), "--image", "nope", "--model", str(model)], "image(s) ['nope'] not found in"),
        ([str(store), "--image", "img0", "--model", str(model)], "'img0_som_clusters' already exists in sdata"),
        ([str(fewer_channels), "--image", "img0", "--model", str(model)], "['marker_04', 'marker_05'] not found"),
    ]
    for argv, message in cases:
        err = refused(["apply", *argv], capsys, Path(argv[0]))
        assert message in err, err
        assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--size", "big"], "invalid int value: 'big'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["cluster"], "the following arguments are required: store, --image"),
        (["apply", "x.zarr", "--image", "a"], "the following arguments are required: --model"),
    ],
)
def test_argparse_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_module():
    result = subprocess.run([sys.executable, "-m", "pixelflowsom", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("pixelflowsom ")


def test_apply_needs_nothing_of_the_training_store(tmp_path):
    """A saved model is the model: apply works where the training store is not (another machine)."""
    import shutil

    training = write_store(tmp_path / "training.zarr", seeds=(2,))
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(training), "--image", "img0", "--n-clusters", "3", "--save-model", str(model_path)]
    assert main([*argv, "--quiet"]) == 0
    assert str(training).encode() not in model_path.read_bytes()
    shutil.rmtree(training)
    other = write_store(tmp_path / "other.zarr", seeds=(0,), order=[1, 0, 2, 3, 4, 5])
    assert main(["apply", str(other), "--image", "img0", "--model", str(model_path), "--quiet"]) == 0
    assert_labels_right(other, "img0", "img0_som_clusters", "img0_metaclusters", load_model(model_path))


def test_cluster_auto_n_clusters(store, tmp_path, capsys):
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "auto", "--max-clusters", "10"]
    assert main([*argv, "--fraction", "0.5", "--save-model", str(model_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    model = load_model(model_path)
    assert model.n_clusters_ == 4  # the four phenotypes of the synthetic images
    agreement = model.n_clusters_choice_.stability[4]
    assert f"4 metaclusters (chosen from the data by the knee rule; {agreement:.0%} of resamples of the SOM" in text
    assert (tmp_path / "sample_pictures" / "n_clusters.png").stat().st_size > 1000
    # R FlowSOM's elbow by name
    argv = ["cluster", str(store), "--image", "img1", "--n-clusters", "auto", "--n-clusters-method", "elbow"]
    assert main([*argv, "--save-model", str(model_path), "--quiet"]) == 0
    assert load_model(model_path).n_clusters_choice_.method == "elbow"
    assert "by the elbow rule" in capsys.readouterr().out
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", model)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), "--image", "img1", "--n-clusters", "many"])
    assert exc.value.code == 2
    assert "argument --n-clusters: invalid value: 'many' (an integer or 'auto')" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Object at zarr.*partial is not recognized")
def test_cluster_overwrite_killed_at_any_step_loses_nothing(tmp_path):
    """`cluster --overwrite` killed before every change of the store: the earlier labels are whole, or the new ones."""
    import json
    import shutil
    import subprocess
    import sys

    from pixelflowsom._store import remove_leftovers

    pristine = write_store(tmp_path / "pristine.zarr", seeds=(0, 1))
    old_args = ["--image", "img0", "--image", "img1", "--n-clusters", "3", "--xdim", "4", "--ydim", "4"]
    assert main(["cluster", str(pristine), *old_args, "--quiet", "--pictures", str(tmp_path / "p")]) == 0
    names = ["img0_som_clusters", "img0_metaclusters", "img1_som_clusters", "img1_metaclusters"]
    before = sd.read_zarr(pristine)
    old = {name: before.labels[name].values for name in names}
    # The new labels: another grid (uint16 SOM ids) and other chunks, so stale metadata would show.
    new_args = ["--image", "img0", "--image", "img1", "--n-clusters", "4", "--xdim", "16", "--ydim", "17"]
    new_args += ["--chunks", "6,32,32", "--overwrite", "--pictures", str(tmp_path / "pictures")]
    work = tmp_path / "work"
    work.mkdir()
    child = Path(__file__).with_name("cli_crash_child.py")
    run = subprocess.run(
        [sys.executable, str(child), str(pristine), str(work), *new_args], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    codes = json.loads((work / "result.json").read_text())["codes"]
    assert codes.pop("complete") == 0, run.stderr
    assert len(codes) >= 4  # at least one swap per element
    assert set(codes.values()) == {1}, run.stderr  # killed there, every time
    complete = sd.read_zarr(work / "complete.zarr")
    new = {name: complete.labels[name].values for name in names}
    assert new["img0_som_clusters"].dtype == np.uint16
    images = sorted(p.relative_to(pristine) for p in (pristine / "images").rglob("*") if p.is_file())
    seen = set()
    for point in sorted(codes, key=lambda name: int(name.split("-")[1])):
        store = work / f"{point}.zarr"
        remove_leftovers(store)  # what the next call does first
        sdata = sd.read_zarr(store)
        states = []
        for name in names:
            values = sdata.labels[name].values
            if values.dtype == old[name].dtype and np.array_equal(values, old[name]):
                states.append("old")
            else:
                np.testing.assert_array_equal(values, new[name], err_msg=f"{point}: {name} is neither old nor new")
                assert values.dtype == np.uint16
                states.append("new")
        seen.add(tuple(states))
        for path in images:  # nothing else changed
            assert (store / path).read_bytes() == (pristine / path).read_bytes()
        shutil.rmtree(store)
    assert ("old",) * 4 in seen
    assert ("new",) * 4 in seen or len(seen) > 1  # killed before, between and after the swaps


def test_cluster_n_samples(tmp_path, capsys):
    """--n-samples trains on that many pixels in all; the labels are the nearest nodes of the saved model's codes."""

    store = write_store(tmp_path / "sample.zarr", seeds=(0, 1), nan=False)
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--channels", "marker_02", "marker_00"]
    argv += ["marker_05", "--n-clusters", "3", "--n-samples", "1001", "--save-model", str(model_path)]
    assert main([*argv, "--quiet"]) == 0
    assert "on 1001 sampled pixels of 2 image(s)" in capsys.readouterr().out
    model = load_model(model_path)
    assert model.n_samples_fit_ == 1001
    assert model.n_samples == 1001
    assert model.fraction is None  # not given: the estimator's default applies
    assert model.channels_ == ["marker_02", "marker_00", "marker_05"]
    for image in ("img0", "img1"):
        assert_labels_right(store, image, f"{image}_som_clusters", f"{image}_metaclusters", model)


def test_demo_n_samples(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--size", "64", "--channels", "6", "--phenotypes", "4", "--n-samples", "500"]
    assert main(argv) == 0
    assert "SOM on 500 sampled pixels (12.2%)" in capsys.readouterr().out


# A progress line, of a phase or of a computation outside phases (tests/test_progress.py), or the notice of a
# first run's kernel compilation.
PROGRESS_LINE = re.compile(
    r"^(\S.*  \[#* *\] +\d+% \| \d+/\d+ tasks \| \d+\.\d s|\S.* \.\.\. \d+\.\d s"
    r"|compiling kernels \(first run only; cached for the next runs\))$"
)


@pytest.fixture
def show_every_computation(monkeypatch):
    """Show the progress of every computation, however short (the tests' computations take milliseconds)."""
    from pixelflowsom import _progress

    monkeypatch.setattr(_progress, "MINIMUM_SECONDS", 0.0)
    monkeypatch.setattr(_progress, "INTERVAL_SECONDS", 0.02)


def test_progress_on_stderr_unless_quiet(store, show_every_computation, capsys):
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--pictures", str(store.parent / "p")]
    assert main([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "tasks" not in out
    assert main([*argv, "--overwrite"]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert all(PROGRESS_LINE.match(line) for line in lines), err
    # Not a terminal: one plain line per phase, named after it.
    named = {line.split("  [")[0].split(" ...")[0] for line in lines}
    assert {"sample the training pixels", "train the SOM", "label the images and write the labels"} <= named, err
    assert any(line.startswith("label the images and write the labels  [") and "100% |" in line for line in lines)
    assert "tasks" not in out


def test_progress_on_a_distributed_cluster(store, tmp_path, show_every_computation, capsys):
    """--scheduler ADDRESS: the scheduler's reports give progress lines on stderr (none with --quiet), right labels."""
    from distributed import LocalCluster

    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "3"]
    argv += ["--save-model", str(model_path), "--pictures", str(tmp_path / "p")]
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
        out, err = capsys.readouterr()
        assert f"Using the dask cluster at {cluster.scheduler_address}" in out
        lines = err.splitlines()
        assert lines, "no progress line"
        assert all(PROGRESS_LINE.match(line) for line in lines), err
        assert main([*argv, "--scheduler", cluster.scheduler_address, "--overwrite", "--quiet"]) == 0
        assert capsys.readouterr().err == ""
    model = load_model(model_path)
    for image in ("img0", "img1"):
        assert_labels_right(store, image, f"{image}_som_clusters", f"{image}_metaclusters", model)


def test_scheduler_address_without_a_scheduler(store, capsys):
    import dask
    import distributed  # noqa: F401 - its configuration first, so that the config.set below leaves it whole

    before = snapshot(store)
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}), pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), "--image", "img0", "--scheduler", "tcp://127.0.0.1:1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pixelflowsom cluster: error: --scheduler 'tcp://127.0.0.1:1': no dask scheduler to connect")
    assert err.count("\n") == 1
    assert snapshot(store) == before


# --------------------------------------------------------------------------- raw tissue: preprocessing, guard rails


def write_counts_store(path, seeds=(0,), channels=6, size=80, order=None):
    """A store of images ``img0``, ... holding raw uint16 counts (synthetic intensities x 1000, NaN as 0)."""
    images = {}
    for i, seed in enumerate(seeds):
        image, _ = make_synthetic_image((size, size), n_channels=channels, n_phenotypes=4, seed=seed)
        counts = np.rint(np.clip(image.values, 0, None) * 1000).astype(np.uint16)
        names = list(image.c.values)
        if order is not None:
            counts, names = counts[order], [names[j] for j in order]
        images[f"img{i}"] = Image2DModel.parse(
            counts, dims=("c", "y", "x"), c_coords=names, chunks={"c": channels, "y": 40, "x": 40}
        )
    sd.SpatialData(images=images).write(path)
    return path


def preprocessed_reference(store, image, model):
    """Labels of ``image`` by a saved Pipeline: its preprocessing of image.sel(c=channels), float64 nearest node."""
    pre, som = model[0], model[-1]
    selected = sd.read_zarr(store).images[image].sel(c=list(pre.channel_names_))
    return image_reference(pre.transform(selected).compute(), som.codes_, som.node_metacluster_, som.channels_)


def test_cluster_preprocess_carries_the_preprocessing_to_apply(tmp_path, capsys):
    """The saved model is the fitted Pipeline; apply preprocesses with it and finds its channels by name."""

    store = write_counts_store(tmp_path / "raw.zarr", seeds=(0, 1))
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--preprocess", "--channels", "marker_04", "marker_01"]
    argv += ["marker_02", "marker_05", "--sigma", "1", "--n-clusters", "4", "--xdim", "5", "--ydim", "5"]
    assert main([*argv, "--save-model", str(model_path), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert "Model (with its preprocessing):" in captured.out
    model = load_model(model_path)
    assert [name for name, _ in model.steps] == ["preprocess", "flowsom"]
    assert model[0].get_params()["sigma"] == 1.0
    assert model[0].channel_names_.tolist() == ["marker_04", "marker_01", "marker_02", "marker_05"]
    sdata = sd.read_zarr(store)
    expected = preprocessed_reference(store, "img0", model)
    np.testing.assert_array_equal(sdata.labels["img0_som_clusters"].values, expected[0])
    np.testing.assert_array_equal(sdata.labels["img0_metaclusters"].values, expected[1])
    # Another store whose images have the channels in another order (all six of them): labelled as on the selection.
    other = write_counts_store(tmp_path / "other.zarr", seeds=(2, 3), order=[5, 3, 1, 0, 4, 2])
    assert main(["apply", str(other), "--image", "img0", "--image", "img1", "--model", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "Labelling with the model's channels [marker_04, marker_01, marker_02, marker_05] after the model's" in out
    labels = sd.read_zarr(other).labels
    for image in ("img0", "img1"):
        expected = preprocessed_reference(other, image, model)
        np.testing.assert_array_equal(labels[f"{image}_som_clusters"].values, expected[0])
        np.testing.assert_array_equal(labels[f"{image}_metaclusters"].values, expected[1])


def test_cluster_writes_the_metacluster_table_with_image_counts(tmp_path, capsys):
    import pandas as pd

    store = write_store(tmp_path / "sample.zarr", seeds=(0, 1))
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "4", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "sample_pictures" / "metaclusters.csv", index_col=0)
    labels = sd.read_zarr(store).labels
    counts = sum(np.bincount(labels[f"img{i}_metaclusters"].values.ravel(), minlength=5) for i in (0, 1))
    assert table.index.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(table["pixels"].to_numpy(), counts[1:])
    np.testing.assert_allclose(table["fraction"].to_numpy(), counts[1:] / counts[1:].sum(), rtol=1e-3)  # 4 digits
    assert [c for c in table.columns if c.startswith("marker_")] == [f"marker_{i:02d}" for i in range(6)]
    # The six NaN pixels of each image are counted as unlabelled.
    assert counts[0] == 12
    assert "Unlabelled pixels (label 0: a NaN channel, in the image or after preprocessing): 12 " in out


def test_raw_counts_warn_once_on_one_line(tmp_path, capsys):
    store = write_counts_store(tmp_path / "raw.zarr")
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pixelflowsom cluster: warning: image(s) ['img0'] hold raw integer counts (99th percentile ")
    assert "add --preprocess" in err
    assert err.count("\n") == 1


def test_tiny_fraction_warns_in_command_line_words(tmp_path, capsys):
    store = write_store(tmp_path / "sample.zarr")
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--fraction", "0.002", "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("pixelflowsom cluster: warning: --fraction 0.002 gives 12 training pixels for a 10x10 SOM")
    assert "Raise --fraction, pass --n-samples N" in err
    assert "UserWarning" not in err
    assert err.count("\n") == 1


def test_apply_refuses_raw_counts_for_a_model_of_preprocessed_pixels_unless_forced(tmp_path, capsys):
    store = write_counts_store(tmp_path / "raw.zarr")
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--preprocess", "--n-clusters", "3", "--quiet"]
    assert main([*argv, "--save-model", str(model_path)]) == 0
    save_model(load_model(model_path)[-1], tmp_path / "som_only.skops")  # the model without its preprocessing
    capsys.readouterr()
    argv = ["apply", str(store), "--image", "img0", "--model", str(tmp_path / "som_only.skops"), "--overwrite"]
    err = refused(argv, capsys, store)
    assert "the images' pixels are far from the training pixels (99th percentiles differ by more than 10x" in err
    assert "This model carries no preprocessing" in err
    assert "pass --force" in err
    assert err.count("\n") == 1
    assert main([*argv, "--force", "--quiet"]) == 0
    som = load_model(tmp_path / "som_only.skops")
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", som)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-clusters", "-3"], "The 'n_clusters' parameter of PixelFlowSOM must be an int in the range"),
        (["--channels", "marker_01", "Marker-02"], "Channel(s) ['Marker-02'] not found in image 'img0' (did you mean "),
        (
            ["--preprocess", "--channels", "marker01"],
            "['marker01'] not found in image 'img0' (did you mean 'marker_01'?",
        ),
        (["--preprocess", "--p", "120"], "The 'q' parameter of PixelPreprocessor must be"),
    ],
)
def test_argument_errors_come_before_the_existing_output_error(store, extra, message, capsys):
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet"]) == 0
    capsys.readouterr()
    err = refused(["cluster", str(store), "--image", "img0", *extra], capsys, store)
    assert message in err, err
    assert "np.str_" not in err
    assert "already exists" not in err


def test_apply_names_the_model_channels(store, tmp_path, capsys):
    model = tmp_path / "model.skops"
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--save-model", str(model)]) == 0
    fewer = write_store(tmp_path / "fewer.zarr", channels=4)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["apply", str(fewer), "--image", "img0", "--model", str(model)])
    err = capsys.readouterr().err
    assert "This model was fitted on channels ['marker_00', 'marker_01', " in err
    assert "pass channels" not in err.lower()


def test_import_npz_and_ome_tiff_then_cluster(tmp_path, capsys):
    """import writes files as image elements with their channel names; cluster finds the channels by name."""
    import tifffile

    image, _ = make_synthetic_image((64, 64), n_channels=5, n_phenotypes=3, seed=0)
    counts = np.rint(np.clip(image.values, 0, None) * 1000).astype(np.uint16)
    names = [str(c) for c in image.c.values]
    np.savez(tmp_path / "fov1.npz", channels=np.array(names), img0=counts)
    store = tmp_path / "cohort.zarr"
    tifffile.imwrite(tmp_path / "plain.tif", counts)
    with pytest.raises(SystemExit) as exc:  # names for 2 of its 5 channels: refused, nothing written
        main(["import", str(tmp_path / "plain.tif"), "--out", str(store), "--channel-names", "a", "b"])
    assert exc.value.code == 2
    assert not store.exists()
    # The same tissue, channels in reverse order, named in its OME metadata.
    metadata = {"axes": "CYX", "Channel": {"Name": names[::-1]}}
    tifffile.imwrite(tmp_path / "fov2.ome.tif", counts[::-1], ome=True, metadata=metadata)
    capsys.readouterr()
    argv = ["import", str(tmp_path / "fov1.npz"), str(tmp_path / "fov2.ome.tif"), "--out", str(store)]
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"Imported 2 image(s) into {store}" in out
    assert "fov1: 5 channels, 64 x 64 pixels, uint16: [marker_00, marker_01, " in out
    sdata = sd.read_zarr(store)
    np.testing.assert_array_equal(sdata.images["fov1"].values, counts)
    np.testing.assert_array_equal(sdata.images["fov2"].values, counts[::-1])
    assert sdata.images["fov2"].c.values.tolist() == names[::-1]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "exists; choose another store path or pass --overwrite to replace it" in capsys.readouterr().err
    argv = ["cluster", str(store), "--image", "fov1", "--image", "fov2", "--preprocess", "--n-clusters", "3"]
    assert main([*argv, "--save-model", str(tmp_path / "model.skops"), "--quiet"]) == 0
    model = load_model(tmp_path / "model.skops")
    labels = sd.read_zarr(store).labels
    for fov in ("fov1", "fov2"):
        expected = preprocessed_reference(store, fov, model)
        np.testing.assert_array_equal(labels[f"{fov}_metaclusters"].values, expected[1])
    # Both FOVs hold the same pixels: their labels are the same.
    np.testing.assert_array_equal(labels["fov1_metaclusters"].values, labels["fov2_metaclusters"].values)


def test_heatmap_scale_option_reaches_the_heatmap(store, monkeypatch):
    from pixelflowsom import pl

    seen = []
    draw = pl.phenotype_heatmap
    monkeypatch.setattr(pl, "phenotype_heatmap", lambda *a, **k: seen.append(k["scale"]) or draw(*a, **k))
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet", "--no-report"]
    assert main(argv) == 0
    assert main([*argv, "--overwrite", "--heatmap-scale", "zscore"]) == 0
    assert seen == ["minmax", "zscore"]


# --------------------------------------------------------------------------- relabel


def node_and_meta(store, image):
    labels = sd.read_zarr(store).labels
    return labels[f"{image}_som_clusters"].values, labels[f"{image}_metaclusters"].values


def lookup(mapping, nodes):
    """The metacluster labels of SOM-node labels under a 1-based node -> metacluster ``mapping`` (0 stays 0)."""
    lut = np.concatenate([[0], mapping])
    return lut[nodes]


def test_relabel_merges_names_and_exports_pixies_csv(tmp_path, capsys):
    store = write_store(tmp_path / "sample.zarr", seeds=(0, 1))
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "4", "--xdim", "4"]
    assert main([*argv, "--ydim", "4", "--save-model", str(model_path), "--quiet"]) == 0
    model = load_model(model_path)
    old = model.node_metacluster_ + 1
    capsys.readouterr()
    csv_path = tmp_path / "mapping.csv"
    argv = ["relabel", str(store), "--image", "img0", "--image", "img1", "--merge", "2", "4", "--name", "2=stroma"]
    assert main([*argv, "--name", "1=tumour", "--export-mapping", str(csv_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    expected = np.where(old == 4, 2, old)  # 2 and 4 merged into 2; nothing above 4 to renumber
    assert "Pixels per metacluster: 1 tumour: " in out
    assert ", 2 stroma: " in out
    for image in ("img0", "img1"):
        nodes, metas = node_and_meta(store, image)
        np.testing.assert_array_equal(metas, lookup(expected, nodes))
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "pixel_som_cluster,pixel_meta_cluster,pixel_meta_cluster_rename"
    assert rows[1:] == [f"{i + 1},{m},{ {1: 'tumour', 2: 'stroma'}.get(m, str(m)) }" for i, m in enumerate(expected)]
    assert (tmp_path / "sample_pictures" / "img1_metaclusters.png").stat().st_size > 1000
    # The store records the new mapping: a second relabel revises it further (3 -> moved node 1 to a new metacluster).
    assert main(["relabel", str(store), "--image", "img0", "--image", "img1", "--move", "1=4", "--quiet"]) == 0
    expected[0] = 4
    for image in ("img0", "img1"):
        nodes, metas = node_and_meta(store, image)
        np.testing.assert_array_equal(metas, lookup(expected, nodes))


def test_relabel_applies_an_edited_pixie_csv(tmp_path, capsys):
    store = write_store(tmp_path / "sample.zarr", seeds=(0,))
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--xdim", "3", "--ydim", "3", "--quiet"]
    assert main(argv) == 0
    csv_path = tmp_path / "mapping.csv"
    assert main(["relabel", str(store), "--image", "img0", "--export-mapping", str(csv_path)]) == 0
    assert "Nothing to change" in capsys.readouterr().out
    # Edited as in a spreadsheet: every node of metacluster 3 goes to 1, and metacluster 1 is named.
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    edited = [rows[0]] + [[n, "1" if m == "3" else m, "T cells" if m in ("1", "3") else r] for n, m, r in rows[1:]]
    csv_path.write_text("\n".join(",".join(r) for r in edited) + "\n")
    assert main(["relabel", str(store), "--image", "img0", "--mapping", str(csv_path), "--quiet"]) == 0
    expected = np.array([int(m) for _, m, _ in edited[1:]])
    nodes, metas = node_and_meta(store, "img0")
    np.testing.assert_array_equal(metas, lookup(expected, nodes))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--merge", "1", "9"], "Metacluster 9 to merge has no SOM node; the metaclusters are [1, 2, 3]"),
        (["--move", "10=1"], "SOM node 10 is not a valid id; ids are 1..9"),
        (["--move", "3"], "--move '3' must be ID=ID, e.g. --move 12=3"),
        (["--name", "7=x"], "names: metacluster 7 does not exist after the revision"),
        (["--mapping", "WRONG"], "they have 9 SOM nodes (1..9); the file misses nodes [5, 6, 7, 8, 9]"),
        (["--mapping", "MISSING"], "does not exist"),
    ],
)
def test_relabel_errors_exit_2_and_leave_the_store(tmp_path, extra, message, capsys):
    store = write_store(tmp_path / "sample.zarr", seeds=(0,))
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--xdim", "3", "--ydim", "3", "--quiet"]
    assert main(argv) == 0
    wrong = tmp_path / "wrong.csv"  # a mapping of another store: 4 nodes
    wrong.write_text("pixel_som_cluster,pixel_meta_cluster\n1,1\n2,1\n3,2\n4,2\n")
    extra = [str(wrong) if e == "WRONG" else str(tmp_path / "none.csv") if e == "MISSING" else e for e in extra]
    capsys.readouterr()
    err = refused(["relabel", str(store), "--image", "img0", *extra], capsys, store)
    assert message in err, err
    assert err.count("\n") == 1


def test_model_saved_by_cluster_applies_in_a_fresh_process(store, tmp_path):
    model_path = tmp_path / "model.skops"
    argv = ["cluster", str(store), "--image", "img0", "--preprocess", "--n-clusters", "4", "--quiet"]
    assert main([*argv, "--save-model", str(model_path)]) == 0
    assert zipfile.is_zipfile(model_path)  # a skops file
    command = [sys.executable, "-m", "pixelflowsom", "apply", str(store), "--image", "img0", "--quiet"]
    command += ["--model", str(model_path), "--cluster-labels", "again_nodes", "--metacluster-labels", "again_meta"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    sdata = sd.read_zarr(store)
    np.testing.assert_array_equal(sdata.labels["again_nodes"].values, sdata.labels["img0_som_clusters"].values)
    np.testing.assert_array_equal(sdata.labels["again_meta"].values, sdata.labels["img0_metaclusters"].values)
    pipeline = load_model(model_path)
    som = pipeline[-1]
    prepared = pipeline[0].transform(sdata.images["img0"])
    expected = image_reference(prepared, som.codes_, som.node_metacluster_, som.channels_)
    np.testing.assert_array_equal(sdata.labels["again_nodes"].values, expected[0])
    np.testing.assert_array_equal(sdata.labels["again_meta"].values, expected[1])


def cluster_and_save(store, model_path):
    """``cluster`` img0 of ``store`` into 3 metaclusters, the model saved to ``model_path``."""
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet", "--save-model", str(model_path)]
    assert main(argv) == 0


class RunsCode:
    """Unpickling it creates a file: a pickle's loader runs whatever its author wrote."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_apply_refuses_a_pickle_unless_trusted(store, tmp_path, capsys):
    import pickle

    import joblib

    marker = tmp_path / "the-pickle-ran"
    crafted = tmp_path / "model.pkl"
    crafted.write_bytes(pickle.dumps(RunsCode(marker)))
    for argv in (["--model", str(crafted)], ["--model", str(crafted), "--force"]):
        err = refused(["apply", str(store), "--image", "img1", *argv], capsys, store)
        assert "is a pickle, not a skops file: loading a pickle runs whatever code its author put in it" in err
        assert "--trust-pickle" in err
        assert err.count("\n") == 1
        assert not marker.exists()
    # An honest pickle (an older --save-model) loads with --trust-pickle, and says what that means.
    cluster_and_save(store, tmp_path / "model.skops")
    honest = tmp_path / "old.joblib"
    joblib.dump(load_model(tmp_path / "model.skops"), honest)
    capsys.readouterr()
    assert main(["apply", str(store), "--image", "img1", "--model", str(honest), "--trust-pickle"]) == 0
    assert "(--trust-pickle): it can run code" in capsys.readouterr().out
    assert_labels_right(store, "img1", "img1_som_clusters", "img1_metaclusters", joblib.load(honest))


def test_apply_refuses_a_skops_file_with_an_untrusted_type(store, tmp_path, capsys):
    import os

    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    cluster_and_save(store, tmp_path / "model.skops")
    evil = tmp_path / "evil.skops"
    som = load_model(tmp_path / "model.skops")
    sio.dump(Pipeline([("f", FunctionTransformer(os.system)), ("som", som)]), evil)
    capsys.readouterr()
    err = refused(["apply", str(store), "--image", "img1", "--model", str(evil)], capsys, store)
    assert f"names types that pixelflowsom does not trust: ['{os.system.__module__}.system']" in err
    assert "pixelflowsom.load_model(file, trusted=[...])" in err
    assert err.count("\n") == 1


def test_save_model_writes_skops_files_only(store, tmp_path, capsys):
    err = refused(
        ["cluster", str(store), "--image", "img0", "--save-model", str(tmp_path / "model.joblib")], capsys, store
    )
    assert "models are saved in skops' format, which loads without running code" in err
    assert f"name it '{tmp_path / 'model.skops'}'" in err
    assert not (tmp_path / "model.joblib").exists()


@pytest.mark.parametrize(
    ("option", "params"),
    [
        (["--fraction", "2"], {"fraction": 2.0}),
        (["--xdim", "0"], {"xdim": 0}),
        (["--ydim", "-1"], {"ydim": -1}),
        (["--n-clusters", "0"], {"n_clusters": 0}),
        (["--n-clusters", "30", "--xdim", "5", "--ydim", "5"], {"n_clusters": 30, "xdim": 5, "ydim": 5}),
        (["--n-samples", "0"], {"n_samples": 0}),
    ],
)
def test_parameter_errors_are_the_estimators_own(store, option, params, capsys):
    """The command line passes parameters on: the estimator's validation is the one place that rejects them."""
    from pixelflowsom import PixelFlowSOM

    with pytest.raises((ValueError, TypeError)) as error:
        PixelFlowSOM(**params).check_input()
    err = refused(["cluster", str(store), "--image", "img0", *option], capsys, store)
    assert err == f"pixelflowsom cluster: error: {error.value}\n"
