"""The "real tissue" guide, run as written on the shared real MIBI image: its command-line labels equal Python's."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd

from .conftest import image_reference

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "real-tissue.md"
#: The shared real images (see their README); the guide's test is skipped where they are not.
REALDATA = Path(os.environ.get("PIXELFLOWSOM_REALDATA", ROOT.parent / "shared" / "realdata"))


def code_blocks(path):
    """The guide's fenced ``bash`` and ``python`` blocks, in order, as ``(language, code)``."""
    return re.findall(r"^```(bash|python)\n(.*?)\n```", path.read_text(), flags=re.S | re.M)


def test_the_guide_has_the_steps_it_promises():
    languages = [language for language, _ in code_blocks(GUIDE)]
    assert languages == ["python", "bash", "bash", "bash", "python", "python"]
    commands = [code for language, code in code_blocks(GUIDE) if language == "bash"]
    assert [c.split()[1] for c in commands] == ["import", "cluster", "apply"]


@pytest.mark.skipif(not (REALDATA / "mibi_her2_fov8.npz").is_file(), reason=f"no shared real images in {REALDATA}")
def test_real_tissue_guide_runs_and_its_labels_equal_the_python_pipeline(tmp_path, monkeypatch):
    shutil.copy(REALDATA / "mibi_her2_fov8.npz", tmp_path)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    namespace = {}
    for language, code in code_blocks(GUIDE):
        if language == "bash":
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], env=env, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            assert "warning" not in result.stderr, result.stderr
        else:
            exec(compile(code, str(GUIDE), "exec"), namespace)  # the guide's own code

    sdata = sd.read_zarr(tmp_path / "cohort.zarr")
    model = namespace["model"]  # the guide's Python Pipeline, fitted on fov1 and fov2
    pre, som = model[0], model[-1]
    for fov in ("fov1", "fov2", "fov3", "fov4"):
        labels = (sdata.labels[f"{fov}_som_clusters"].values, sdata.labels[f"{fov}_metaclusters"].values)
        python = model.transform(sdata.images[fov]).values
        np.testing.assert_array_equal(labels[0], python[0])
        np.testing.assert_array_equal(labels[1], python[1])
        # and both are the float64 nearest node of the codes on the preprocessed image.sel(c=channels)
        selected = pre.transform(sdata.images[fov].sel(c=namespace["channels"])).compute()
        expected = image_reference(selected, som.codes_, som.node_metacluster_, som.channels_)
        np.testing.assert_array_equal(labels[0], expected[0])
        np.testing.assert_array_equal(labels[1], expected[1])
    assert "fov3_preprocessed" in sd.read_zarr(tmp_path / "cohort.zarr").images
    table = (tmp_path / "cohort_pictures" / "metaclusters.csv").read_text().splitlines()
    assert table[0].startswith("metacluster,pixels,fraction,CD45,CD3,")
    assert len(table) == 1 + som.n_clusters_
