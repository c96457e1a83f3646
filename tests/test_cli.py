"""The command line, as a new user runs it: demo, cluster, apply, and every error path (exit code 2, one line)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel

from pixelflowsom._cli import main
from pixelflowsom._synthetic import make_synthetic_image


def write_store(path, seeds=(0,), channels=6, size=80):
    images = {}
    for i, seed in enumerate(seeds):
        image, _ = make_synthetic_image((size, size), n_channels=channels, n_phenotypes=4, seed=seed)
        images[f"img{i}"] = Image2DModel.parse(
            image.values, dims=("c", "y", "x"), c_coords=list(image.c.values), chunks={"c": channels, "y": 40, "x": 40}
        )
    sd.SpatialData(images=images).write(path)
    return path


def snapshot(path):
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in Path(path).rglob("*")}


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
    model = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "4", "--xdim", "5"]
    assert main([*argv, "--ydim", "5", "--fraction", "0.3", "--save-model", str(model), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "img0: SOM nodes -> 'img0_som_clusters', metaclusters -> 'img0_metaclusters'" in text
    sdata = sd.read_zarr(store)
    assert {"img0_som_clusters", "img0_metaclusters", "img1_som_clusters", "img1_metaclusters"} <= set(sdata.labels)
    pictures = tmp_path / "sample_pictures"
    assert (pictures / "img1_metaclusters.png").stat().st_size > 1000
    assert model.stat().st_size > 0

    other = write_store(tmp_path / "other.zarr", seeds=(0,))
    assert main(["apply", str(other), "--image", "img0", "--model", str(model), "--metacluster-labels", "meta"]) == 0
    applied = sd.read_zarr(other)
    np.testing.assert_array_equal(applied["meta"].values, sdata["img0_metaclusters"].values)
    np.testing.assert_array_equal(applied["img0_som_clusters"].values, sdata["img0_som_clusters"].values)


def test_cluster_channels_chunks_processes(store, capsys):
    argv = ["cluster", str(store), "--image", "img0", "--channels", "marker_01", "marker_03", "marker_05"]
    argv += ["--n-clusters", "3", "--chunks", "6,32,48", "--scheduler", "processes", "--quiet"]
    assert main(argv) == 0
    labels = sd.read_zarr(store)["img0_metaclusters"]
    assert labels.data.chunks == ((32, 32, 16), (48, 32))
    assert set(np.unique(labels.values)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["cluster", "--help"], ["apply", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: pixelflowsom" in capsys.readouterr().out


CLUSTER_ERRORS = [
    (["--image", "nope"], r"Image element(s) ['nope'] not found in sdata; available images: ['img0', 'img1']"),
    (["--image", "img0", "--channels", "CD3"], "['CD3'] not found in image 'img0'; available channels"),
    (["--image", "img0", "--fraction", "0"], "--fraction 0.0 must be in (0, 1]"),
    (["--image", "img0", "--n-clusters", "500"], "n_clusters=500 is larger than the number of SOM nodes"),
    (["--image", "img0", "--chunks", "40,40"], "chunks=(40, 40) has 2 sizes; these images need 3: (c, y, x)"),
    (["--image", "img0", "--chunks", "big"], "--chunks 'big' must be 'auto', an int, or comma-separated ints"),
    (["--image", "img0", "--cluster-labels", "a", "b"], "--cluster-labels got 2 name(s) for 1 image(s)"),
    (["--image", "img0", "--metacluster-labels", "img1"], "Output name 'img1' is already the name of a images"),
    (["--image", "img0", "--save-model", "/nonexistent/m.joblib"], "--save-model: folder '/nonexistent' does not"),
    (["--image", "img0", "--xdim", "0"], "xdim=0 must be a positive integer"),
]


@pytest.mark.parametrize(("extra", "message"), CLUSTER_ERRORS)
def test_cluster_errors_exit_2_and_leave_store(store, extra, message, capsys):
    before = snapshot(store)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("pixelflowsom cluster: error: ")
    assert snapshot(store) == before


def test_existing_output_needs_overwrite(store, capsys):
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(store)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), "--image", "img0", "--n-clusters", "3"])
    assert exc.value.code == 2
    assert "'img0_som_clusters' already exists in sdata; pass overwrite=True" in capsys.readouterr().err
    assert snapshot(store) == before
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "4", "--overwrite", "--quiet"]) == 0


def test_store_errors(tmp_path, capsys):
    for path, message in ((tmp_path / "missing.zarr", "does not exist"), (tmp_path, "is not a readable SpatialData")):
        with pytest.raises(SystemExit) as exc:
            main(["cluster", str(path), "--image", "img0"])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_apply_errors(store, tmp_path, capsys):
    model = tmp_path / "model.joblib"
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--save-model", str(model)]) == 0
    capsys.readouterr()
    not_a_model = tmp_path / "junk.joblib"
    import joblib

    joblib.dump({"a": 1}, not_a_model)
    fewer_channels = write_store(tmp_path / "fewer.zarr", channels=4)
    cases = [
        ([str(store), "--image", "img1", "--model", str(tmp_path / "none.joblib")], "does not exist"),
        ([str(store), "--image", "img1", "--model", str(not_a_model)], "is not a fitted PixelFlowSOM"),
        ([str(store), "--image", "nope", "--model", str(model)], "image(s) ['nope'] not found in"),
        ([str(store), "--image", "img0", "--model", str(model)], "'img0_som_clusters' already exists in sdata"),
        ([str(fewer_channels), "--image", "img0", "--model", str(model)], "['marker_04', 'marker_05'] not found"),
    ]
    for argv, message in cases:
        target = Path(argv[0])
        before = snapshot(target)
        with pytest.raises(SystemExit) as exc:
            main(["apply", *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1
        assert snapshot(target) == before


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
