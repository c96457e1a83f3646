"""Tests of pixelflowsom._importing: multiplexed image files read with their channel names, written into a new store."""

import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import tifffile

from pixelflowsom import _importing
from pixelflowsom._importing import import_images, read_image

NAMES = ["CD45", "CD3", "DNA"]
REALDATA = Path("/work/shared/realdata/mibi_her2_fov8.npz")


def _image(seed=0, shape=(3, 16, 20), dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(dtype)


def _write(kind, folder: Path, image, names=NAMES, stem="fov1") -> Path:
    """Write ``image`` ``(c, y, x)`` as a file (or folder) of ``kind``; return its path."""
    if kind == "tiff":
        path = folder / f"{stem}.tiff"
        tifffile.imwrite(path, image, photometric="minisblack")
    elif kind == "ome":
        path = folder / f"{stem}.ome.tif"
        tifffile.imwrite(path, image, ome=True, metadata={"axes": "CYX", "Channel": {"Name": list(names)}})
    elif kind == "imagej":
        path = folder / f"{stem}.tif"
        tifffile.imwrite(path, image, imagej=True, metadata={"axes": "CYX", "Labels": list(names)})
    elif kind == "pages":  # one page per channel, as many instruments write them
        path = folder / f"{stem}.tif"
        with tifffile.TiffWriter(path) as tif:
            for plane in image:
                tif.write(plane, metadata=None)
    elif kind == "planar":  # one page of (c, y, x) samples
        path = folder / f"{stem}.tif"
        tifffile.imwrite(path, image, photometric="rgb", planarconfig="separate")
    elif kind == "yxs":  # samples last, RGB-like
        path = folder / f"{stem}.tif"
        tifffile.imwrite(path, np.moveaxis(image, 0, -1), photometric="rgb")
    elif kind == "tiled":
        path = folder / f"{stem}.tif"
        tifffile.imwrite(path, image, photometric="minisblack", compression="zlib", tile=(16, 16))
    elif kind == "npz":
        path = folder / f"{stem}.npz"
        np.savez_compressed(path, channels=np.array(names), img0=image)
    elif kind == "npy":
        path = folder / f"{stem}.npy"
        np.save(path, image)
    elif kind == "folder":
        path = folder / stem
        path.mkdir()
        for name, plane in zip(names, image, strict=True):
            tifffile.imwrite(path / f"{name}.tiff", plane)
    else:
        raise AssertionError(kind)
    return path


def _snapshot(path: Path) -> dict:
    """Every file below ``path`` and its bytes."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


# (kind, the names the file has: None if unnamed, the order of the written channels it returns)
FORMATS = [
    ("tiff", None, [0, 1, 2]),
    ("ome", NAMES, [0, 1, 2]),
    ("imagej", NAMES, [0, 1, 2]),
    ("pages", None, [0, 1, 2]),
    ("planar", None, [0, 1, 2]),
    ("yxs", None, [0, 1, 2]),
    ("tiled", None, [0, 1, 2]),
    ("npz", NAMES, [0, 1, 2]),
    ("npy", None, [0, 1, 2]),
    ("folder", sorted(NAMES), [1, 0, 2]),  # channels sorted by name
]


@pytest.mark.parametrize(("kind", "names", "order"), FORMATS, ids=[f[0] for f in FORMATS])
def test_read_image_values_names_dims(tmp_path, kind, names, order):
    image = _image()
    image_read = read_image(_write(kind, tmp_path, image))
    assert image_read.dims == ("c", "y", "x")
    assert isinstance(image_read.data, da.Array)
    assert image_read.dtype == np.uint16
    np.testing.assert_array_equal(image_read.values, image[order])
    expected = names if names is not None else ["0", "1", "2"]
    channels = image_read.c.values.tolist()
    assert channels == expected
    assert all(type(c) is str for c in channels)
    assert image_read.name == "fov1"


@pytest.mark.parametrize("kind", ["tiff", "ome", "npz", "npy", "folder"])
def test_read_image_channels_name_or_replace_the_files_names(tmp_path, kind):
    image = _image()
    image_read = read_image(_write(kind, tmp_path, image), channels=("a", "b", np.str_("c")))
    assert image_read.c.values.tolist() == ["a", "b", "c"]
    assert all(type(c) is str for c in image_read.c.values.tolist())


@pytest.mark.parametrize("kind", ["npy", "npz", "tiff"])
def test_read_image_2d_is_one_channel(tmp_path, kind):
    plane = _image(shape=(16, 20))
    if kind == "npz":
        path = tmp_path / "p.npz"
        np.savez(path, img0=plane)
    else:
        path = _write(kind, tmp_path, plane, stem="p")
    image_read = read_image(path)
    assert image_read.shape == (1, 16, 20)
    assert image_read.c.values.tolist() == ["0"]
    np.testing.assert_array_equal(image_read.values[0], plane)


def test_read_image_large_tiff_is_read_lazily_in_tiles(tmp_path):
    image = _image(shape=(2, 300, 260))
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, photometric="minisblack", compression="zlib", tile=(64, 64))
    image_read = read_image(path)
    assert image_read.data.chunksize == (1, 300, 260)  # whole tiles, up to 1024 pixels a side
    # The lazy array holds the path, not an open file: it pickles, so processes and distributed schedulers run it.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(image_read.data)).compute(), image)
    npy = read_image(_write("npy", tmp_path, image, stem="big"))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(npy.data)).compute(), image)


def test_read_image_ome_names_as_written(tmp_path):
    # tifffile.xml2dict reads number-like values as numbers ("01" -> 1, "1e3" -> 1000.0): the names stay as written.
    names = ["01", "1e3", "true", "CD3,CD8"]
    path = _write("ome", tmp_path, _image(shape=(4, 8, 8)), names=names)
    assert read_image(path).c.values.tolist() == names


def test_read_image_page_names(tmp_path):
    image = _image()
    path = tmp_path / "named_pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for name, plane in zip(NAMES, image, strict=True):
            tif.write(plane, metadata=None, extratags=[(285, "s", 0, name, True)])  # PageName
    image_read = read_image(path)
    assert image_read.c.values.tolist() == NAMES
    np.testing.assert_array_equal(image_read.values, image)


def test_read_image_folder_ignores_hidden_files_and_subfolders(tmp_path):
    path = _write("folder", tmp_path, _image())
    (path / ".DS_Store").write_bytes(b"junk")
    (path / "._CD3.tiff").write_bytes(b"junk")  # macOS metadata files
    (path / "segmentation").mkdir()
    (path / "notes.txt").write_text("x")
    assert read_image(path).c.values.tolist() == sorted(NAMES)


@pytest.mark.parametrize(
    ("stem", "name"),
    [("fov 1 #2", "fov_1__2"), ("__fov", "fov"), (".hidden", "hidden"), ("a-b.c_d", "a-b.c_d"), ("###", "image")],
)
def test_read_image_element_name(tmp_path, stem, name):
    path = tmp_path / f"{stem}.npy"
    np.save(path, _image(shape=(2, 4, 4)))
    assert read_image(path).name == name
    sd.models.Image2DModel.parse(read_image(path).data, dims=("c", "y", "x"))  # accepted by spatialdata


def _bad_npz(path):
    np.savez(path, img0=_image(), img1=_image())
    return path


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (lambda d: _write("npz", d, _image()), {"channels": ["a", "b"]}, ValueError, r"names 2 channel.*has 3"),
        (lambda d: _write("npy", d, _image()), {"channels": ["a", "b", "a"]}, ValueError, r"repeated.*\['a'\]"),
        (lambda d: _write("npz", d, _image(), names=["x", "y", "x"]), {}, ValueError, r"repeated.*\['x'\]"),
        (lambda d: _write("npy", d, _image(shape=(2, 3, 4, 5))), {}, ValueError, r"\(2, 3, 4, 5\)"),
        (lambda d: d / "missing.tif", {}, FileNotFoundError, "missing.tif"),
        (lambda d: (d / "a.png").write_bytes(b"x") and d / "a.png", {}, ValueError, r"'\.png'.*\.ome\.tiff, \.npz"),
        (lambda d: _write("npy", d, _image()), {"channels": "abc"}, TypeError, "list of channel names"),
        (lambda d: _write("npy", d, _image()), {"channels": [1, 2, 3]}, TypeError, "str channel names"),
        (lambda d: _bad_npz(d / "two.npz"), {}, ValueError, r"\['img0', 'img1'\].*exactly one image"),
        (lambda d: (d / "empty").mkdir() or d / "empty", {}, ValueError, "no .tif/.tiff files"),
        (lambda d: (d / "bad.tif").write_bytes(b"not a tiff") and d / "bad.tif", {}, ValueError, "Cannot read TIFF"),
    ],
    ids=[
        "channel-count",
        "duplicate-given",
        "duplicate-in-file",
        "4d",
        "missing",
        "suffix",
        "channels-str",
        "channels-int",
        "npz-two-images",
        "empty-folder",
        "not-a-tiff",
    ],
)
def test_read_image_errors(tmp_path, make, kwargs, error, match):
    path = make(tmp_path)
    with pytest.raises(error, match=match) as info:
        read_image(path, **kwargs)
    assert "np.str_" not in str(info.value)


def test_read_image_refuses_z_stacks_and_multichannel_tiffs_in_folders(tmp_path):
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(path, _image(shape=(3, 1, 8, 8)), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ValueError, match="axes 'ZYX'"):
        read_image(path)
    folder = _write("folder", tmp_path, _image())
    tifffile.imwrite(folder / "RGB.tif", _image(shape=(3, 16, 20)), photometric="minisblack")
    with pytest.raises(ValueError, match="RGB.tif.*holds 3 channels"):
        read_image(folder)


def test_read_image_refuses_several_series(tmp_path):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(_image(), photometric="minisblack")
        tif.write(_image(shape=(8, 8)))
    with pytest.raises(ValueError, match=r"holds 2 image series.*save each image to its own file"):
        read_image(path)


def test_read_image_big_endian_npy_is_native(tmp_path):
    image = _image()
    image_read = read_image(_write("npy", tmp_path, image.astype(">u2")))
    assert image_read.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(image_read.values, image)


def test_read_image_object_channels_are_not_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, channels=np.array(NAMES, dtype=object), img0=_image())
    with pytest.raises(ValueError, match="pickled"):
        read_image(path)


def test_read_image_real_data():
    if not REALDATA.exists():
        pytest.skip(f"{REALDATA} (the shared real MIBI image) is not on this machine")
    with np.load(REALDATA) as z:
        channels, image = [str(c) for c in z["channels"]], z["img0"]
    image_read = read_image(REALDATA)
    assert len(channels) == 22
    assert image_read.c.values.tolist() == channels
    assert image_read.name == "mibi_her2_fov8"
    assert image_read.dtype == image.dtype
    np.testing.assert_array_equal(image_read.values, image)


# ---------------------------------------------------------------------------------------------------------------------
# import_images


def _inputs(folder: Path):
    """Three files with different channels: the path, the array, its channel names, its element name."""
    folder.mkdir()
    a, b, c = _image(0), _image(1, shape=(2, 12, 9)), _image(2, dtype=np.float32)
    return [
        (_write("ome", folder, a, stem="fov1"), a, NAMES, "fov1"),
        (_write("npz", folder, b, names=["CD8", "Ki67"], stem="fov 2"), b, ["CD8", "Ki67"], "fov_2"),
        (_write("folder", folder, c, stem="fov3"), c[[1, 0, 2]], sorted(NAMES), "fov3"),
    ]


def test_import_images_writes_a_store(tmp_path):
    inputs = _inputs(tmp_path / "in")
    store = tmp_path / "out" / "images.zarr"
    store.parent.mkdir()
    written = import_images([p for p, *_ in inputs], store)
    assert written == [name for *_, name in inputs]
    assert sorted(p.name for p in store.parent.iterdir()) == ["images.zarr"]  # no temporary folder left
    sdata = sd.read_zarr(store)
    assert sorted(sdata.images) == sorted(written)
    for _, array, names, name in inputs:
        element = sdata.images[name]
        assert element.dims == ("c", "y", "x")
        assert element.c.values.tolist() == names
        assert element.dtype == array.dtype
        np.testing.assert_array_equal(element.values, array)
        assert element.data.chunksize == array.shape  # all channels in one chunk; small images in one


def test_import_images_names_channels_and_chunks(tmp_path):
    image = _image(shape=(3, 40, 30))
    paths = [_write("npy", tmp_path, image, stem="a"), _write("tiff", tmp_path, image, stem="b")]
    store = tmp_path / "s.zarr"
    written = import_images(
        paths, store, names=["first", "second"], channels=[["x", "y", "z"], None], chunks={"c": 1, "y": 16, "x": 16}
    )
    assert written == ["first", "second"]
    sdata = sd.read_zarr(store)
    assert sdata.images["first"].c.values.tolist() == ["x", "y", "z"]
    assert sdata.images["second"].c.values.tolist() == ["0", "1", "2"]
    assert sdata.images["first"].data.chunks == ((1, 1, 1), (16, 16, 8), (16, 14))
    np.testing.assert_array_equal(sdata.images["second"].values, image)
    import_images(paths[0], tmp_path / "one.zarr", channels=NAMES)  # one path; one channel list for every file
    assert sd.read_zarr(tmp_path / "one.zarr").images["a"].c.values.tolist() == NAMES


@pytest.mark.parametrize(
    ("n_channels", "itemsize", "expected"),
    [(22, 2, (22, 1024)), (56, 4, (56, 512)), (200, 4, (200, 256)), (2000, 8, (128, 256))],
)
def test_default_chunks_hold_all_channels_up_to_64_mib(n_channels, itemsize, expected):
    chunks = _importing._default_chunks(n_channels, itemsize)
    assert (chunks["c"], chunks["y"]) == expected
    assert chunks["x"] == chunks["y"]
    assert chunks["c"] * chunks["y"] * chunks["x"] * itemsize <= 64 * 2**20


def test_import_images_existing_store(tmp_path):
    path = _write("npy", tmp_path, _image())
    store = tmp_path / "s.zarr"
    import_images([path], store, names=["old"])
    before = _snapshot(store)
    with pytest.raises(
        ValueError, match=r"s\.zarr' exists; choose another store path or pass overwrite=True to replace it"
    ):
        import_images([path], store, names=["new"])
    assert _snapshot(store) == before
    assert import_images([path], store, names=["new"], overwrite=True) == ["new"]
    assert list(sd.read_zarr(store).images) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fov1.npy", "s.zarr"]  # no backup, no temporary folder


def test_import_images_overwrite_replaces_only_spatialdata_stores(tmp_path):
    path = _write("npy", tmp_path, _image())
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (precious / "thesis.txt").write_text("years of work")
    before = _snapshot(precious)
    with pytest.raises(ValueError, match="not a SpatialData zarr store"):
        import_images([path], precious, overwrite=True)
    assert _snapshot(precious) == before
    old_format = tmp_path / "old.zarr"  # as older spatialdata wrote stores: no spatialdata_attrs
    (old_format / "images").mkdir(parents=True)
    (old_format / ".zgroup").write_text('{"zarr_format": 2}')
    assert import_images([path], old_format, overwrite=True) == ["fov1"]
    assert list(sd.read_zarr(old_format).images) == ["fov1"]
    a_file = tmp_path / "a_file.zarr"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a SpatialData zarr store"):
        import_images([path], a_file, overwrite=True)
    assert a_file.read_text() == "x"


def _bad_suffix(d):
    (d / "x.png").write_bytes(b"x")
    return [_write("npy", d, _image(), stem="good"), d / "x.png"]


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (_bad_suffix, {}, ValueError, "unsupported file type '.png'"),
        (lambda d: [_write("npy", d, _image())], {"channels": ["a"]}, ValueError, "names 1 channel.*has 3"),
        (
            lambda d: [_write("npy", d, _image(), stem="a"), _write("npz", d, _image(), stem="a")],
            {},
            ValueError,
            r"Element names clash.*'a'.*'a'.*pass names=",
        ),
        (
            lambda d: [_write("npy", d, _image(), stem="x"), _write("npz", d, _image(), stem="y")],
            {"names": ["fov", "FOV"]},
            ValueError,
            "regardless of case",
        ),
        (lambda d: [_write("npy", d, _image())], {"names": ["a", "b"]}, ValueError, "names has 2 name.*1 path"),
        (lambda d: [_write("npy", d, _image())], {"names": ["__a"]}, ValueError, "not a valid spatialdata"),
        (lambda d: [_write("npy", d, _image())], {"names": [".a"]}, ValueError, "starts with '.'"),
        (lambda d: [_write("npy", d, _image()), d / "gone.npy"], {}, FileNotFoundError, "gone.npy"),
        (lambda d: [], {}, ValueError, "No image files"),
        (lambda d: [_write("npy", d, _image())], {"channels": [["a", "b", "c"], None]}, ValueError, "2 entries"),
    ],
    ids=[
        "suffix",
        "channel-count",
        "duplicate-derived",
        "duplicate-case",
        "names-count",
        "invalid-name",
        "hidden-name",
        "missing",
        "no-paths",
        "channels-per-file",
    ],
)
def test_import_images_errors_leave_nothing(tmp_path, make, kwargs, error, match):
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = make(inputs)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error, match=match):
        import_images(paths, out / "s.zarr", **kwargs)
    assert list(out.iterdir()) == []


def test_import_images_missing_parent_folder(tmp_path):
    path = _write("npy", tmp_path, _image())
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        import_images([path], tmp_path / "no" / "s.zarr")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_import_images_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch, existing):
    path = _write("npy", tmp_path, _image())
    store = tmp_path / "out" / "s.zarr"
    store.parent.mkdir()
    if existing:
        import_images([path], store, names=["old"])
    before = _snapshot(store) if existing else None
    write = sd.SpatialData.write

    def failing_write(self, file_path, **kwargs):
        write(self, file_path, **kwargs)  # a complete temporary store, then the failure (e.g. a full disk)
        assert Path(file_path).name.startswith(".s.zarr.importing-")
        raise OSError("No space left on device")

    monkeypatch.setattr(sd.SpatialData, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        import_images([path], store, names=["new"], overwrite=True)
    assert sorted(p.name for p in store.parent.iterdir()) == (["s.zarr"] if existing else [])
    if existing:
        assert _snapshot(store) == before


def test_import_images_failed_swap_restores_the_old_store(tmp_path, monkeypatch):
    path = _write("npy", tmp_path, _image())
    store = tmp_path / "s.zarr"
    import_images([path], store, names=["old"])
    before = _snapshot(store)
    rename = _importing.os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".s.zarr.importing-"):
            raise OSError("interrupted")
        rename(src, dst)

    monkeypatch.setattr(_importing.os, "rename", failing_rename)
    with pytest.raises(OSError, match="interrupted"):
        import_images([path], store, names=["new"], overwrite=True)
    assert _snapshot(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fov1.npy", "s.zarr"]
