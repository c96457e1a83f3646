"""Tests of pixelflowsom._store: labels elements written in one computation, O(N) store work, crash-safe swaps."""

import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import xarray as xr
import zarr
from spatialdata.models import Image2DModel, Image3DModel, Labels2DModel, Labels3DModel
from spatialdata.transformations import Scale, get_transformation, set_transformation

from pixelflowsom import _store
from pixelflowsom._store import (
    check_output_names,
    read_label_attrs,
    relabel_metaclusters,
    remove_leftovers,
    scheduler,
    write_label_stacks,
)

SHAPE_2D, SHAPE_3D = (32, 40), (4, 16, 20)
N_NODES = 30  # SOM nodes of the relabelling tests


def _lut(mapping):
    """The numpy reference of a relabelling: ``lut[node]``, 0 for unlabelled pixels."""
    return np.concatenate([[0], np.asarray(mapping)])


def _images(n, ndim=2, seed=0):
    """Image elements ``im0..`` with two channels and, besides ``global``, an ``aligned`` coordinate system."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n):
        if ndim == 2:
            image = Image2DModel.parse(
                rng.random((2, *SHAPE_2D)), dims=("c", "y", "x"), c_coords=["a", "b"], chunks=(2, 16, 16)
            )
            set_transformation(image, Scale([0.5 + i, 2.0], axes=("y", "x")), "aligned")
        else:
            image = Image3DModel.parse(
                rng.random((2, *SHAPE_3D)), dims=("c", "z", "y", "x"), c_coords=["a", "b"], chunks=(2, 2, 8, 8)
            )
            set_transformation(image, Scale([1.0, 0.5 + i, 2.0], axes=("z", "y", "x")), "aligned")
        images[f"im{i}"] = image
    return images


def _values(n, ndim=2, seed=1, dtype=np.uint8, high=200):
    """Known label stacks ``(2, [z,] y, x)`` of images ``im0..``: the independent expectation."""
    rng = np.random.default_rng(seed)
    shape = SHAPE_2D if ndim == 2 else SHAPE_3D
    return {f"im{i}": rng.integers(0, high, (2, *shape)).astype(dtype) for i in range(n)}


def _lazy(values, chunks=8):
    """Lazy stacks as the estimator returns them: dask-backed DataArrays with dims ``("label", [z,] y, x)``."""
    out = []
    for array in values.values():
        dims = ("label", "y", "x") if array.ndim == 3 else ("label", "z", "y", "x")
        out.append(xr.DataArray(da.from_array(array, chunks=(2, *(chunks,) * (array.ndim - 1))), dims=dims))
    return out


def _names(n, prefix=""):
    return [(f"{prefix}c{i}", f"{prefix}m{i}") for i in range(n)]


def _backed(tmp_path, images, labels=None, name="s.zarr"):
    sdata = sd.SpatialData(images=images, labels=labels or {})
    sdata.write(tmp_path / name)
    return sd.read_zarr(tmp_path / name)


def _level_values(element):
    """The numpy values of every level of a labels element (one for a DataArray)."""
    if isinstance(element, xr.DataArray):
        return [element.values]
    return [next(iter(element[scale].ds.data_vars.values())).values for scale in element]


def _expected_levels(values, scale_factors):
    """Levels expected from spatialdata's own pyramid of the known numpy values."""
    model = Labels2DModel if values.ndim == 2 else Labels3DModel
    dims = ("y", "x") if values.ndim == 2 else ("z", "y", "x")
    return _level_values(model.parse(values, dims=dims, scale_factors=scale_factors))


def _snapshot(root):
    root = Path(root)
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _assert_consolidated_consistent(path):
    """Consolidated metadata (if any) describes exactly what the store's own ``zarr.json`` files describe."""
    consolidated = zarr.open_group(str(path), mode="r").metadata.consolidated_metadata
    if consolidated is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about the staging folder, which is no zarr node
        disk = dict(zarr.open_group(str(path), mode="r", use_consolidated=False).members(max_depth=None))
    flat = consolidated.flattened_metadata
    assert set(flat) == set(disk)
    for key, meta in flat.items():
        if isinstance(meta, zarr.core.group.GroupMetadata):
            assert meta.attributes == disk[key].metadata.attributes, key
        else:
            assert meta.to_dict() == disk[key].metadata.to_dict(), key


def _assert_clean(path):
    names = [p.name for p in Path(path).rglob("*")]
    assert not [n for n in names if n.startswith(_store.STAGING_PREFIX) or n.endswith(".partial")]


# ---------------------------------------------------------------------------------------------------------------------
# check_output_names, scheduler


@pytest.fixture
def sdata_with_labels():
    images = _images(2)
    labels = {"old": Labels2DModel.parse(np.zeros(SHAPE_2D, np.uint8), dims=("y", "x"))}
    return sd.SpatialData(images=images, labels=labels)


@pytest.mark.parametrize(
    ("clusters", "metaclusters", "overwrite", "error", "match"),
    [
        (["a", "b"], ["a", "c"], False, ValueError, r"Output name\(s\) \['a'\] are used more than once"),
        (["a", "b"], ["A", "c"], False, ValueError, r"differ only in case"),
        (["im1", "b"], ["c", "d"], False, ValueError, r"Output name 'im1' is already the name of a images element"),
        (["old", "b"], ["c", "d"], False, ValueError, r"Labels element 'old' already exists in sdata; pass overwrite"),
        (["OLD", "b"], ["c", "d"], True, ValueError, r"'OLD' differs only in case from the element 'old'"),
        (["a b", "b"], ["c", "d"], False, ValueError, r"'a b' is not a valid spatialdata element name"),
        (["__a", "b"], ["c", "d"], False, ValueError, r"not a valid spatialdata element name"),
        (["a", ".b"], ["c", "d"], False, ValueError, r"'.b' starts with '.' \(hidden names\)"),
        (["a", "b"], [".pixelflowsom-x", "d"], False, ValueError, r"the temporary names of pixelflowsom"),
        (["a", 3], ["c", "d"], False, TypeError, r"Output name 3 must be a str"),
    ],
)
def test_check_output_names_errors(sdata_with_labels, clusters, metaclusters, overwrite, error, match):
    with pytest.raises(error, match=match):
        check_output_names(sdata_with_labels, ["im0", "im1"], clusters, metaclusters, overwrite)


def test_check_output_names_accepts_free_names_and_overwrite(sdata_with_labels):
    check_output_names(sdata_with_labels, ["im0", "im1"], ["a", "b"], ["c", "d"], False)
    check_output_names(sdata_with_labels, ["im0", "im1"], ["old", "b"], ["c", "d"], True)


def test_check_output_names_sees_the_store(tmp_path):
    sdata = _backed(tmp_path, _images(1), {"ondisk": Labels2DModel.parse(np.zeros(SHAPE_2D, np.uint8), dims="yx")})
    del sdata.labels["ondisk"]  # in the store, no longer in sdata
    with pytest.raises(ValueError, match=r"'ondisk' already exists in sdata's zarr store .* \(though not in sdata\)"):
        check_output_names(sdata, ["im0"], ["ondisk"], ["m"], False)
    check_output_names(sdata, ["im0"], ["ondisk"], ["m"], True)
    del sdata.images["im0"]
    with pytest.raises(ValueError, match=r"'im0' is already the name of a images element of sdata \(in its zarr"):
        check_output_names(sdata, [], ["im0"], ["m"], True)


def test_scheduler():
    with scheduler(None):
        assert dask.config.get("scheduler", None) is None
    with scheduler("synchronous"):  # stands for a distributed.Client: any value dask accepts
        assert dask.config.get("scheduler") == "synchronous"


# ---------------------------------------------------------------------------------------------------------------------
# write_label_stacks: results


@pytest.mark.parametrize("ndim", [2, 3])
def test_parsed_layers_are_what_spatialdata_parses(ndim):
    # The metacluster layer is a copy of the parsed node layer with its own data: identical to parsing it.
    from spatialdata.models import Labels2DModel, Labels3DModel
    from spatialdata.transformations import get_transformation

    from pixelflowsom._store import _parse_labels

    images = _images(1, ndim)
    sdata = sd.SpatialData(images=images)
    stack = _lazy(_values(1, ndim))[0]
    nodes, metaclusters = _parse_labels(sdata, ["im0"], [stack], None)
    model = Labels2DModel if ndim == 2 else Labels3DModel
    transformations = dict(get_transformation(images["im0"], get_all=True))
    for layer, element in enumerate((nodes, metaclusters)):
        expected = model.parse(stack.data[layer], dims=stack.dims[1:], transformations=transformations)
        xr.testing.assert_identical(element, expected)
        assert get_transformation(element, get_all=True) == get_transformation(expected, get_all=True)
    assert metaclusters.attrs["transform"] is not nodes.attrs["transform"]  # not shared


@pytest.mark.parametrize(("ndim", "scale_factors"), [(2, None), (2, [2]), (3, None), (3, [2])])
def test_in_memory(ndim, scale_factors):
    images = _images(2, ndim)
    sdata = sd.SpatialData(images=images)
    values = _values(2, ndim)
    write_label_stacks(sdata, list(images), _lazy(values), _names(2), scale_factors=scale_factors)
    assert sdata.path is None
    for (image, stack), names in zip(values.items(), _names(2), strict=True):
        for layer, name in enumerate(names):
            element = sdata.labels[name]
            assert isinstance(element, xr.DataTree if scale_factors else xr.DataArray)
            levels = _level_values(element)
            for got, expected in zip(levels, _expected_levels(stack[layer], scale_factors), strict=True):
                assert got.dtype == np.uint8
                np.testing.assert_array_equal(got, expected)
            assert get_transformation(element, get_all=True) == get_transformation(images[image], get_all=True)


@pytest.mark.parametrize(("ndim", "scale_factors"), [(2, None), (2, [2, 2]), (3, [2])])
def test_backed_write_then_overwrite(tmp_path, ndim, scale_factors):
    images = _images(2, ndim)
    sdata = _backed(tmp_path, images)
    path = Path(sdata.path)
    for dtype, chunks in ((np.uint8, 16), (np.uint16, 8)):  # the overwrite changes dtype and chunks
        values = _values(2, ndim, seed=int(chunks), dtype=dtype, high=1000 if dtype == np.uint16 else 200)
        write_label_stacks(sdata, list(images), _lazy(values, chunks), _names(2), scale_factors=scale_factors)
        reread = sd.read_zarr(path)
        for (image, stack), names in zip(values.items(), _names(2), strict=True):
            for layer, name in enumerate(names):
                for element in (sdata.labels[name], reread.labels[name]):
                    levels = _level_values(element)
                    for got, expected in zip(levels, _expected_levels(stack[layer], scale_factors), strict=True):
                        assert got.dtype == dtype
                        np.testing.assert_array_equal(got, expected)
                    assert get_transformation(element, get_all=True) == get_transformation(images[image], get_all=True)
                # lazy, read from the element's own folder in the store
                data = _store._levels(sdata.labels[name])[0]
                assert isinstance(data, da.Array)
                assert data.chunksize == tuple(min(chunks, size) for size in stack.shape[1:])
                files = sd.get_dask_backing_files(sdata.labels[name])
                assert files
                assert all(Path(f).is_relative_to((path / "labels" / name).resolve()) for f in files)
        assert sorted(p.name for p in path.iterdir()) == ["images", "labels", "zarr.json"]
        _assert_clean(path)
        _assert_consolidated_consistent(path)
        assert sdata.has_consolidated_metadata()
        listed = zarr.open_group(str(path / "labels"), mode="r").attrs["ome"]["labels"]
        assert sorted(listed) == sorted(n for pair in _names(2) for n in pair)


@pytest.mark.parametrize("scale_factors", [None, [2]])
def test_backed_metadata_is_what_write_element_writes(tmp_path, scale_factors):
    images = _images(1)
    ours = _backed(tmp_path, images, name="ours.zarr")
    values = _values(1)
    write_label_stacks(ours, ["im0"], _lazy(values), [("c", "m")], scale_factors=scale_factors)
    theirs = _backed(tmp_path, images, name="theirs.zarr")
    theirs.labels["c"] = Labels2DModel.parse(
        da.from_array(values["im0"][0], chunks=8),
        dims=("y", "x"),
        transformations=get_transformation(images["im0"], get_all=True),
        scale_factors=scale_factors,
    )
    theirs.write_element("c")
    ours_files = {p.relative_to(ours.path): p for p in (Path(ours.path) / "labels" / "c").rglob("*") if p.is_file()}
    theirs_files = {p.relative_to(theirs.path): p for p in (theirs.path / "labels" / "c").rglob("*") if p.is_file()}
    assert set(ours_files) == set(theirs_files)
    for key, file in ours_files.items():
        if file.name == "zarr.json":
            assert json.loads(file.read_text()) == json.loads(theirs_files[key].read_text()), key
        else:
            assert file.read_bytes() == theirs_files[key].read_bytes(), key


def test_numpy_backed_stack_and_no_labels_group_yet(tmp_path):
    sdata = _backed(tmp_path, _images(1))
    assert not (Path(sdata.path) / "labels").exists()
    values = _values(1)
    stack = xr.DataArray(values["im0"], dims=("label", "y", "x"))
    write_label_stacks(sdata, ["im0"], [stack], [("c", "m")])
    np.testing.assert_array_equal(sd.read_zarr(sdata.path).labels["m"].values, values["im0"][1])


@pytest.mark.parametrize("backed", [False, True])
def test_one_computation_each_block_once(tmp_path, monkeypatch, backed):
    images = _images(3)
    sdata = _backed(tmp_path, images) if backed else sd.SpatialData(images=images)
    values = _values(3)
    calls = []
    lock = threading.Lock()

    def label_block(block, block_info=None):
        with lock:
            calls.append(block_info[None]["chunk-location"])
        return block.copy()

    stacks = [s.copy(data=s.data.map_blocks(label_block, meta=np.empty((0, 0, 0), s.dtype))) for s in _lazy(values)]
    computations = []
    compute = _store._compute
    monkeypatch.setattr(_store, "_compute", lambda *a, **k: computations.append(1) or compute(*a, **k))
    write_label_stacks(sdata, list(images), stacks, _names(3), scale_factors=[2])
    n_blocks = sum(s.data.npartitions for s in stacks)
    assert len(calls) == n_blocks  # every block once, for both layers and both levels
    assert len(computations) == 1
    for name, stack in zip(_names(3), values.values(), strict=True):
        np.testing.assert_array_equal(_level_values(sdata.labels[name[1]])[0], stack[1])


# ---------------------------------------------------------------------------------------------------------------------
# O(N) store work


def _count_store_work(tmp_path, monkeypatch, n_images):
    images = _images(n_images)
    sdata = _backed(tmp_path, images, name=f"n{n_images}.zarr")
    write_label_stacks(sdata, list(images), _lazy(_values(n_images)), _names(n_images))  # then overwrite them
    counts = dict.fromkeys(["get", "set", "delete", "list_dir", "read_zarr", "write_consolidated", "consolidate"], 0)

    def spy(owner, name, key, is_async):
        original = getattr(owner, name)

        async def async_wrapper(*args, **kwargs):
            counts[key] += 1
            return await original(*args, **kwargs)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, async_wrapper if is_async else wrapper)

    for method in ("get", "set", "delete"):
        spy(zarr.storage.LocalStore, method, method, True)
    original_list_dir = zarr.storage.LocalStore.list_dir

    def list_dir(self, prefix):
        counts["list_dir"] += 1
        return original_list_dir(self, prefix)

    monkeypatch.setattr(zarr.storage.LocalStore, "list_dir", list_dir)
    spy(sd, "read_zarr", "read_zarr", False)
    spy(sd.SpatialData, "write_consolidated_metadata", "write_consolidated", False)
    spy(zarr, "consolidate_metadata", "consolidate", False)
    write_label_stacks(sdata, list(images), _lazy(_values(n_images, seed=2)), _names(n_images))
    monkeypatch.undo()
    return counts


def test_store_work_is_linear_in_the_number_of_elements(tmp_path, monkeypatch):
    c1, c2, c3 = (_count_store_work(tmp_path, monkeypatch, n) for n in (1, 2, 3))  # 2, 4, 6 elements
    for counts in (c1, c2, c3):
        assert counts["read_zarr"] == 0  # the written elements are read from their own folders
        assert counts["write_consolidated"] == counts["consolidate"] == 1  # once per call
    for key in ("get", "set", "delete", "list_dir"):
        # a + b * N exactly: every element costs the same, whatever the number of elements already in the store
        assert c3[key] - c2[key] == c2[key] - c1[key], (key, c1[key], c2[key], c3[key])


# ---------------------------------------------------------------------------------------------------------------------
# failures and leftovers


def _raising_block(block):
    raise RuntimeError("labelling failed")


def _wrong_dtype_block(block):
    return block.astype(np.uint32)


@pytest.mark.parametrize("failure", ["compute", "dtype"])
@pytest.mark.parametrize("backed", [False, True])
def test_failure_changes_nothing(tmp_path, failure, backed):
    images = _images(2)
    old = {"c0": Labels2DModel.parse(np.ones(SHAPE_2D, np.uint8), dims=("y", "x"))}
    sdata = _backed(tmp_path, images, old) if backed else sd.SpatialData(images=images, labels=old)
    stacks = _lazy(_values(2))
    block = _raising_block if failure == "compute" else _wrong_dtype_block
    stacks[1] = stacks[1].copy(data=stacks[1].data.map_blocks(block, meta=np.empty((0, 0, 0), np.uint8)))
    before = _snapshot(sdata.path) if backed else None
    elements = dict(sdata.labels)
    error = {"compute": RuntimeError, "dtype": TypeError}[failure]
    with pytest.raises(error, match="labelling failed|declares uint8"):
        write_label_stacks(sdata, list(images), stacks, _names(2))
    assert dict(sdata.labels) == elements
    assert all(sdata.labels[k] is v for k, v in elements.items())
    if backed:
        assert _snapshot(sdata.path) == before


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ("lengths", ValueError, r"Got 2 image names, 1 label stacks and 2 name pairs"),
        ("missing", KeyError, r"Image element\(s\) \['nope'\] not found"),
        ("dims", ValueError, r"has dims \('label', 'x', 'y'\)"),
        ("layers", ValueError, r"expected \(2, y, x\)"),
        ("shape", ValueError, r"has spatial shape \{'y': 32, 'x': 39\}"),
        ("dtype", TypeError, r"has dtype int64; expected unsigned ints"),
        ("pair", ValueError, r"must be a \(cluster, metacluster\) pair"),
        ("name", ValueError, r"already the name of a images element"),
    ],
)
def test_write_label_stacks_validates_before_any_work(tmp_path, change, error, match):
    images = _images(2)
    sdata = _backed(tmp_path, images)
    image_names, stacks, names = list(images), _lazy(_values(2)), _names(2)
    if change == "lengths":
        stacks = stacks[:1]
    elif change == "missing":
        image_names[1] = "nope"
    elif change == "dims":
        stacks[1] = stacks[1].rename({"y": "x", "x": "y"})
    elif change == "layers":
        stacks[1] = stacks[1][:1]
    elif change == "shape":
        stacks[1] = stacks[1][:, :, :39]
    elif change == "dtype":
        stacks[1] = stacks[1].astype(np.int64)
    elif change == "pair":
        names[1] = ("a", "b", "c")
    elif change == "name":
        names[1] = ("im0", "b")
    before = _snapshot(sdata.path)
    with pytest.raises(error, match=match):
        write_label_stacks(sdata, image_names, stacks, names)
    assert _snapshot(sdata.path) == before


def test_refuses_to_replace_the_folder_another_element_reads(tmp_path):
    sdata = _backed(tmp_path, _images(1), {"c": Labels2DModel.parse(np.ones(SHAPE_2D, np.uint8), dims="yx")})
    sdata.labels["derived"] = sdata.labels["c"] + 1  # lazily reads labels/c
    before = _snapshot(sdata.path)
    with pytest.raises(ValueError, match=r"Element 'derived' of sdata reads its data from .*'c' that this call"):
        write_label_stacks(sdata, ["im0"], _lazy(_values(1)), [("c", "m")])
    assert _snapshot(sdata.path) == before


def test_remove_leftovers(tmp_path):
    old = {name: Labels2DModel.parse(np.full(SHAPE_2D, i + 1, np.uint8), dims="yx") for i, name in enumerate("ab")}
    sdata = _backed(tmp_path, _images(1), old)
    path = Path(sdata.path)
    pristine = _snapshot(path)
    assert remove_leftovers(sdata) == []
    assert remove_leftovers(path) == []
    assert remove_leftovers(sd.SpatialData()) == []
    assert _snapshot(path) == pristine
    # What a call killed in the middle of a two-rename swap leaves: consolidated metadata removed, 'a' moved aside.
    _store._drop_consolidated(path)
    staging = path / ".pixelflowsom-0123456789abcdef-c"
    (staging / "0" / "old").mkdir(parents=True)
    (path / "labels" / "a").rename(staging / "0" / "old" / "a")
    (staging / "1" / "labels" / "b").mkdir(parents=True)  # a staged element
    partials = [path / "zarr.0123456789abcdef0123456789abcdef.partial", path / "labels" / f"zarr.{'a' * 32}.partial"]
    for partial in partials:
        partial.write_text("{")
    assert sorted(remove_leftovers(str(path))) == sorted([staging, *partials])
    _assert_clean(path)
    assert _snapshot(path).keys() == pristine.keys()
    _assert_consolidated_consistent(path)
    assert sdata.has_consolidated_metadata()
    reread = sd.read_zarr(path)
    for i, name in enumerate("ab"):
        np.testing.assert_array_equal(reread.labels[name].values, i + 1)


def test_swaps_without_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(_store, "_exchange_call", lambda: None)
    images = _images(2)
    sdata = _backed(tmp_path, images)
    for seed in (1, 2):
        values = _values(2, seed=seed)
        write_label_stacks(sdata, list(images), _lazy(values), _names(2))
        reread = sd.read_zarr(sdata.path)
        for (_, stack), (c, m) in zip(values.items(), _names(2), strict=True):
            np.testing.assert_array_equal(reread.labels[c].values, stack[0])
            np.testing.assert_array_equal(reread.labels[m].values, stack[1])
    _assert_clean(sdata.path)
    _assert_consolidated_consistent(sdata.path)


# ---------------------------------------------------------------------------------------------------------------------
# relabel_metaclusters, read_label_attrs


def _node_values(n, ndim=2, seed=3, n_nodes=N_NODES):
    """Known SOM-node labels (0 = unlabelled) of images ``im0..``: the independent expectation's input."""
    rng = np.random.default_rng(seed)
    shape = SHAPE_2D if ndim == 2 else SHAPE_3D
    return {f"im{i}": rng.integers(0, n_nodes + 1, shape).astype(np.uint8) for i in range(n)}


def _labelled(tmp_path, n, ndim=2, backed=True, scale_factors=None, seed=3):
    """sdata with images ``im0..``, node labels ``c<i>`` and metaclusters ``m<i>`` written by write_label_stacks."""
    images = _images(n, ndim)
    sdata = _backed(tmp_path, images) if backed else sd.SpatialData(images=images)
    nodes = _node_values(n, ndim, seed)
    stacks = {name: np.stack([v, (v % 4 + 1) * (v > 0)]).astype(np.uint8) for name, v in nodes.items()}
    write_label_stacks(sdata, list(images), _lazy(stacks), _names(n), scale_factors=scale_factors)
    return sdata, images, nodes


def _mapping(seed=4, high=9, n_nodes=N_NODES):
    return np.random.default_rng(seed).integers(1, high, n_nodes)


def _assert_relabelled(sdata, images, names, mapping, scale_factors, dtype):
    for c, m in names:
        nodes_element, element = sdata.labels[c], sdata.labels[m]
        assert isinstance(element, xr.DataTree if scale_factors else xr.DataArray)
        node_levels = _level_values(nodes_element)
        levels = _level_values(element)
        assert len(levels) == len(node_levels) == 1 + len(scale_factors or [])
        for node_level, level in zip(node_levels, levels, strict=True):
            # numpy reference, pixel by pixel: 0 stays 0, node k gets mapping[k - 1]
            expected = np.where(node_level == 0, 0, np.asarray(mapping)[np.maximum(node_level.astype(int) - 1, 0)])
            assert level.dtype == dtype
            np.testing.assert_array_equal(level, expected)
        # the levels are spatialdata's own pyramid of the relabelled full resolution (the lookup commutes with it)
        for level, expected in zip(levels, _expected_levels(levels[0], scale_factors), strict=True):
            np.testing.assert_array_equal(level, expected)
        image = images[f"im{c.removeprefix('c')}"]  # node labels c<i> label the image im<i>
        assert get_transformation(element, get_all=True) == get_transformation(image, get_all=True)


@pytest.mark.parametrize(
    ("backed", "ndim", "scale_factors"),
    [(False, 2, None), (False, 3, [2]), (True, 2, None), (True, 2, [2, 2]), (True, 3, [2])],
)
def test_relabel_metaclusters(tmp_path, backed, ndim, scale_factors):
    sdata, images, _ = _labelled(tmp_path, 3, ndim, backed, scale_factors)
    names = _names(3)
    for mapping, dtype in ((_mapping(), np.uint8), (_mapping(seed=5, high=1000), np.uint16)):
        relabel_metaclusters(sdata, [c for c, _ in names], [m for _, m in names], mapping)
        _assert_relabelled(sdata, images, names, mapping, scale_factors, dtype)
        if backed:
            reread = sd.read_zarr(sdata.path)
            _assert_relabelled(reread, images, names, mapping, scale_factors, dtype)
            for _, m in names:
                files = sd.get_dask_backing_files(sdata.labels[m])  # lazy, read from its own folder
                assert files
                assert all(Path(f).is_relative_to((Path(sdata.path) / "labels" / m).resolve()) for f in files)
            _assert_clean(sdata.path)
            _assert_consolidated_consistent(sdata.path)
            assert sdata.has_consolidated_metadata()


def test_relabel_creates_missing_elements_and_keeps_the_node_labels(tmp_path):
    sdata, images, nodes = _labelled(tmp_path, 2)
    before = {k: v for k, v in _snapshot(sdata.path).items() if k.startswith(("images", "labels/c"))}
    mapping = _mapping()
    relabel_metaclusters(sdata, ["c0", "c1", "c0"], ["new0", "new1", "m0"], mapping)
    _assert_relabelled(sdata, images, [("c0", "new0"), ("c1", "new1"), ("c0", "m0")], mapping, None, np.uint8)
    reread = sd.read_zarr(sdata.path)
    _assert_relabelled(reread, images, [("c0", "new0"), ("c1", "new1")], mapping, None, np.uint8)
    assert {k: v for k, v in _snapshot(sdata.path).items() if k.startswith(("images", "labels/c"))} == before
    listed = zarr.open_group(str(Path(sdata.path) / "labels"), mode="r").attrs["ome"]["labels"]
    assert {"new0", "new1"} <= set(listed)


def test_relabel_single_scale_element_of_a_multiscale_node_element(tmp_path):
    sdata, images, nodes = _labelled(tmp_path, 1, scale_factors=[2])
    sdata.labels["single"] = Labels2DModel.parse(np.zeros(SHAPE_2D, np.uint8), dims="yx")
    sdata.write_element("single")
    mapping = _mapping()
    relabel_metaclusters(sdata, ["c0"], ["single"], mapping)
    for element in (sdata.labels["single"], sd.read_zarr(sdata.path).labels["single"]):
        assert isinstance(element, xr.DataArray)
        np.testing.assert_array_equal(element.values, _lut(mapping)[nodes["im0"]])
        assert get_transformation(element, get_all=True) == get_transformation(images["im0"], get_all=True)


@pytest.mark.parametrize("backed", [False, True])
def test_relabel_one_computation_reads_each_chunk_once(tmp_path, monkeypatch, backed):
    sdata, _, nodes = _labelled(tmp_path, 3, backed=backed, scale_factors=[2])
    calls = []
    lock = threading.Lock()

    def read_block(block, block_info=None):
        with lock:
            calls.append(block_info[None]["chunk-location"])
        return block

    n_chunks = 0
    for name, _ in _names(3):  # count every chunk the computation takes from the node labels, at every level
        levels = [level.map_blocks(read_block, dtype=level.dtype) for level in _store._levels(sdata.labels[name])]
        n_chunks += sum(level.npartitions for level in levels)
        sdata.labels[name] = _store._with_levels(sdata.labels[name], levels)
    computations = []
    compute = _store._compute
    monkeypatch.setattr(_store, "_compute", lambda *a, **k: computations.append(1) or compute(*a, **k))
    mapping = _mapping()
    relabel_metaclusters(sdata, [c for c, _ in _names(3)], [m for _, m in _names(3)], mapping)
    assert len(computations) == 1
    assert len(calls) == n_chunks
    for (_, m), values in zip(_names(3), nodes.values(), strict=True):
        np.testing.assert_array_equal(_level_values(sdata.labels[m])[0], _lut(mapping)[values])


@pytest.mark.parametrize("backed", [False, True])
def test_attrs_round_trip(tmp_path, backed):
    images = _images(3)
    sdata = _backed(tmp_path, images) if backed else sd.SpatialData(images=images)
    mapping = np.arange(1, N_NODES + 1) % 3 + 1
    record = {"mapping": mapping, "names": {1: "tumour", "2": "stroma"}, "k": np.int64(3)}
    # JSON types, as read back from a store; the SOM-node element's name is added
    expected = {"mapping": mapping.tolist(), "names": {"1": "tumour", "2": "stroma"}, "k": 3}
    values = _lazy(_values(3, high=N_NODES + 1))
    write_label_stacks(sdata, list(images), values, _names(3), attrs=[record, None, {"k": 1}])
    assert read_label_attrs(sdata, "m0") == {**expected, "som_clusters": "c0"}
    assert read_label_attrs(sdata, "m1") is None
    assert read_label_attrs(sdata, "m2") == {"k": 1, "som_clusters": "c2"}
    assert read_label_attrs(sdata, "c0") is None
    write_label_stacks(sdata, list(images), values, _names(3), attrs=record)  # one record for all
    for i in range(3):
        assert read_label_attrs(sdata, f"m{i}") == {**expected, "som_clusters": f"c{i}"}
    relabel_metaclusters(sdata, ["c0", "c1"], ["m0", "m1"], mapping[::-1], attrs=[None, {"names": {"1": "a"}}])
    relabelled = {
        "m0": {"mapping": mapping[::-1].tolist(), "som_clusters": "c0"},
        "m1": {"names": {"1": "a"}, "mapping": mapping[::-1].tolist(), "som_clusters": "c1"},
        "m2": {**expected, "som_clusters": "c2"},
    }
    views = [sdata]
    if backed:
        views.append(sd.read_zarr(sdata.path))  # from the store: the elements' zarr group attributes
        for name in ("m0", "m1", "m2"):
            group_attrs = zarr.open_group(str(Path(sdata.path) / "labels" / name), mode="r").attrs.asdict()
            assert group_attrs[_store.ATTRS_KEY] == relabelled[name]
            assert {"ome", "spatialdata_attrs"} <= set(group_attrs)  # spatialdata's own attributes are kept
    for view in views:
        for name, record in relabelled.items():
            assert read_label_attrs(view, name) == record
            read_label_attrs(view, name)["som_clusters"] = "x"  # a copy
            assert read_label_attrs(view, name) == record
        assert read_label_attrs(view, "c0") is None
    relabel_metaclusters(sdata, ["c0"], ["m0"], mapping, attrs={"names": {"2": "b"}})
    assert read_label_attrs(sdata, "m0") == {"names": {"2": "b"}, "mapping": mapping.tolist(), "som_clusters": "c0"}
    with pytest.raises(KeyError, match="'nope' not found"):
        read_label_attrs(sdata, "nope")


def test_in_memory_records_survive_a_write(tmp_path):
    images = _images(1)
    sdata = sd.SpatialData(images=images)
    write_label_stacks(sdata, ["im0"], _lazy(_values(1)), [("c0", "m0")], attrs={"names": {"1": "a"}})
    sdata.write(tmp_path / "w.zarr")  # spatialdata writes the element, not the record
    reread = sd.read_zarr(tmp_path / "w.zarr")
    np.testing.assert_array_equal(reread.labels["m0"].values, sdata.labels["m0"].values)
    assert read_label_attrs(sdata, "m0") == {"names": {"1": "a"}, "som_clusters": "c0"}


def test_relabel_checks_the_recorded_node_count(tmp_path):
    sdata, _, _ = _labelled(tmp_path, 1)
    relabel_metaclusters(sdata, ["c0"], ["m0"], _mapping())  # records N_NODES nodes for c0
    reread = sd.read_zarr(sdata.path)
    before = _snapshot(sdata.path)
    with pytest.raises(ValueError, match=rf"mapping has {N_NODES + 1} entries.*record a mapping of {N_NODES} SOM"):
        relabel_metaclusters(reread, ["c0"], ["m0"], _mapping(n_nodes=N_NODES + 1))
    assert _snapshot(sdata.path) == before


def _bad_relabel_call(change):
    """Arguments of relabel_metaclusters with one thing wrong, the error and its message."""
    nodes, metas, mapping, attrs = ["c0", "c1"], ["m0", "m1"], _mapping(), None
    error, match = ValueError, None
    if change == "unknown node":
        nodes, error, match = ["c0", "nope"], KeyError, r"SOM-node labels element\(s\) \['nope'\] not found"
    elif change == "lengths":
        metas, match = ["m0"], "Got 2 node labels names and 1 metacluster labels names"
    elif change == "image name":
        metas, match = ["m0", "im1"], "'im1' is already the name of a images element"
    elif change == "node name":
        metas, match = ["m0", "c0"], r"Metacluster name\(s\) \['c0'\] are also SOM-node labels elements"
    elif change == "repeated":
        metas, match = ["m0", "m0"], r"\['m0'\] are used more than once"
    elif change == "str names":
        nodes, error, match = "c0", TypeError, "must be a sequence of str"
    elif change == "float mapping":
        mapping, error, match = mapping.astype(float), TypeError, "must hold integers"
    elif change == "bool mapping":
        mapping, error, match = mapping > 3, TypeError, "must hold integers"
    elif change == "zero id":
        mapping[4], match = 0, "gives node 5 the metacluster id 0"
    elif change == "2d mapping":
        mapping, match = mapping.reshape(5, -1), "one-dimensional"
    elif change == "empty mapping":
        mapping, match = [], "one-dimensional"
    elif change == "attrs length":
        attrs, match = [{}], "Got 1 attrs for 2 images"
    elif change == "attrs json":
        attrs, error, match = {"a": object()}, TypeError, r"attrs\[0\] is not JSON-serialisable"
    elif change == "attrs type":
        attrs, error, match = [{}, 3], TypeError, r"attrs\[1\] must be a dict \(or None\)"
    elif change == "node id above the mapping":  # found during the computation
        mapping, match = mapping[:-1], f"hold the node id {N_NODES}, but the mapping covers nodes 1 to {N_NODES - 1}"
    return (nodes, metas, mapping, attrs), error, match


@pytest.mark.parametrize(
    "change",
    [
        "unknown node",
        "lengths",
        "image name",
        "node name",
        "repeated",
        "str names",
        "float mapping",
        "bool mapping",
        "zero id",
        "2d mapping",
        "empty mapping",
        "attrs length",
        "attrs json",
        "attrs type",
        "node id above the mapping",
    ],
)
@pytest.mark.parametrize("backed", [False, True])
def test_relabel_errors_change_nothing(tmp_path, change, backed):
    sdata, _, nodes = _labelled(tmp_path, 2, backed=backed)
    assert max(int(v.max()) for v in nodes.values()) == N_NODES
    (node_names, metacluster_names, mapping, attrs), error, match = _bad_relabel_call(change)
    before = _snapshot(sdata.path) if backed else None
    elements = dict(sdata.labels)
    with pytest.raises(error, match=match):
        relabel_metaclusters(sdata, node_names, metacluster_names, mapping, attrs=attrs)
    assert all(sdata.labels[k] is v for k, v in elements.items())
    assert dict(sdata.labels) == elements
    if backed:
        assert _snapshot(sdata.path) == before


def test_relabel_refuses_other_levels(tmp_path):
    sdata, _, _ = _labelled(tmp_path, 1)  # single-scale node labels
    sdata.labels["pyramid"] = Labels2DModel.parse(np.zeros(SHAPE_2D, np.uint8), dims="yx", scale_factors=[2])
    with pytest.raises(ValueError, match=r"'pyramid' have levels of shapes \[\(32, 40\), \(16, 20\)\]"):
        relabel_metaclusters(sdata, ["c0"], ["pyramid"], _mapping())


def test_relabel_negative_node_ids(tmp_path):
    sdata = sd.SpatialData(labels={"c": Labels2DModel.parse(np.array([[0, 1], [-1, 2]], np.int16), dims="yx")})
    with pytest.raises(ValueError, match="negative id -1"):
        relabel_metaclusters(sdata, ["c"], ["m"], [1, 2])
    sdata.labels["c"] = Labels2DModel.parse(np.array([[0, 1], [3, 2]], np.int16), dims="yx")
    relabel_metaclusters(sdata, ["c"], ["m"], [5, 6, 7])
    np.testing.assert_array_equal(sdata.labels["m"].values, [[0, 5], [7, 6]])
    assert sdata.labels["m"].dtype == np.uint8


# ---------------------------------------------------------------------------------------------------------------------
# killed calls


def _kill_setup(tmp_path, mode):
    """A store with images im0, im1 and labels c0, m0, c1 (uint8, chunks 16); new stacks: uint16, chunks 8."""
    tmp_path.mkdir(parents=True)
    images = _images(2)
    old_values = {name: np.full(SHAPE_2D, i + 1, np.uint8) for i, name in enumerate(["c0", "m0", "c1"])}
    old = {name: Labels2DModel.parse(v, dims=("y", "x"), chunks=16) for name, v in old_values.items()}
    pristine = tmp_path / "pristine.zarr"
    sd.SpatialData(images=images, labels=old).write(pristine)
    new_values = _values(2, seed=5, dtype=np.uint16, high=1000)
    np.savez(tmp_path / "values.npz", **new_values)
    work = tmp_path / "work"
    work.mkdir(parents=True)
    config = {
        "pristine": str(pristine),
        "work": str(work),
        "values": str(tmp_path / "values.npz"),
        "images": ["im0", "im1"],
        "names": _names(2),
        "chunks": [8, 8],
        "mode": mode,
        "parallel": 2,
        # fallback: only where it differs from exchange: the first swap (two renames) and the rename of a new name
        "kinds": ["rename"] if mode == "fallback" else None,
        "max_points": 3 if mode == "fallback" else None,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    new = {name: new_values[f"im{i}"][layer] for i, pair in enumerate(_names(2)) for layer, name in enumerate(pair)}
    return pristine, work, old_values, new


def _relabel_kill_setup(tmp_path):
    """A store with images im0, im1, node labels c0, c1 and metacluster labels m0 (uint8); relabel m0, m1 (uint16)."""
    tmp_path.mkdir(parents=True)
    rng = np.random.default_rng(7)
    nodes = {f"c{i}": rng.integers(0, N_NODES + 1, SHAPE_2D).astype(np.uint8) for i in range(2)}
    old_values = {**nodes, "m0": np.full(SHAPE_2D, 1, np.uint8)}
    old = {name: Labels2DModel.parse(v, dims=("y", "x"), chunks=16) for name, v in old_values.items()}
    pristine = tmp_path / "pristine.zarr"
    sd.SpatialData(images=_images(2), labels=old).write(pristine)
    mapping = rng.integers(1, 301, N_NODES)
    mapping[0] = 300  # the new labels are uint16, the old ones uint8
    work = tmp_path / "work"
    work.mkdir(parents=True)
    config = {
        "pristine": str(pristine),
        "work": str(work),
        "mode": "relabel",
        "node_names": ["c0", "c1"],
        "metacluster_names": ["m0", "m1"],
        "mapping": mapping.tolist(),
        "parallel": 2,
        "kinds": None,
        "max_points": None,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    new = {f"m{i}": _lut(mapping)[nodes[f"c{i}"]] for i in range(2)}
    return pristine, work, old_values, new


def _state(sdata, name, old_values, new):
    """'old', 'new' or 'absent': which complete element a name holds (anything else fails)."""
    if name not in sdata.labels:
        return "absent"
    values = sdata.labels[name].values
    if name in old_values and values.dtype == np.uint8 and np.array_equal(values, old_values[name]):
        return "old"
    assert name in new, f"{name} is not old"
    assert values.dtype == np.uint16, f"{name} is neither old nor new"
    assert np.array_equal(values, new[name]), f"{name} is neither old nor new"
    return "new"


@pytest.mark.filterwarnings("ignore:Object at zarr.*partial is not recognized")
def test_killed_call_leaves_a_readable_store(tmp_path):
    """Kill an overwrite at every step of its store work: the store always opens, every name holds a whole element.

    ``exchange``: swaps by atomic exchange (Linux, macOS); ``fallback``: by two renames, where a kill between the two
    leaves the name empty until remove_leftovers renames the old element back; ``relabel``: relabel_metaclusters
    (by exchange) replaces one metacluster element and creates another. tests/store_crash_child.py kills the call
    before every filesystem mutation outside the staging folder and before a few inside it. A kill inside one of
    zarr's atomic writes leaves a ``.partial`` file, about which zarr warns.
    """
    setups = {mode: _kill_setup(tmp_path / mode, mode) for mode in ("exchange", "fallback")}
    setups["relabel"] = _relabel_kill_setup(tmp_path / "relabel")
    child = Path(__file__).with_name("store_crash_child.py")
    configs = [str(tmp_path / mode / "config.json") for mode in setups]
    run = subprocess.run([sys.executable, str(child), *configs], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for mode, (pristine, work, old_values, new) in setups.items():
        codes = json.loads((work / "result.json").read_text())["codes"]
        visible = sorted((name for name in codes if name.startswith("visible")), key=lambda n: int(n.split("-")[1]))
        inside = [name for name in codes if name.startswith("inside")]
        fresh_call = visible[len(visible) // 2]  # in the middle of the swaps
        assert {codes[name] for name in visible} == {1}, run.stderr  # killed there, in every run
        assert {codes[name] for name in inside} <= {0, 1}, run.stderr  # killed (or complete: fewer events)
        assert codes["complete"] == 0, run.stderr
        images = {k: v for k, v in _snapshot(pristine).items() if k.startswith("images")}
        progress = []
        for point in [*visible, *inside, "complete"]:
            store = work / f"{point}.zarr"
            sdata = sd.read_zarr(store)  # opens, before any recovery
            states = tuple(_state(sdata, n, old_values, new) for n in new)
            untouched = [n for n in old_values if n not in new]  # the node labels of a relabelling
            assert all(_state(sdata, n, old_values, {}) == "old" for n in untouched), point
            if mode != "fallback":
                assert all(s != "absent" for n, s in zip(new, states, strict=True) if n in old_values), (point, states)
            if point.startswith("visible"):
                progress.append(states)
            assert {k: v for k, v in _snapshot(store).items() if k.startswith("images")} == images
            _assert_consolidated_consistent(store)
            if point == fresh_call and mode == "relabel":
                # a fresh call, which removes the leftovers first, succeeds
                mapping = np.arange(N_NODES) % 3 + 1
                relabel_metaclusters(sdata, ["c0", "c1"], ["m0", "m1"], mapping)
                fresh = sd.read_zarr(store)
                for i in range(2):
                    expected = _lut(mapping)[old_values[f"c{i}"]]
                    np.testing.assert_array_equal(fresh.labels[f"m{i}"].values, expected)
            elif point == fresh_call:
                # a fresh call, which removes the leftovers first, succeeds
                values = _values(2, seed=6)
                write_label_stacks(sdata, ["im0", "im1"], _lazy(values), _names(2))
                fresh = sd.read_zarr(store)
                for stack, (c, m) in zip(values.values(), _names(2), strict=True):
                    np.testing.assert_array_equal(fresh.labels[c].values, stack[0])
                    np.testing.assert_array_equal(fresh.labels[m].values, stack[1])
            else:
                remove_leftovers(store)
                sdata = sd.read_zarr(store)
                states = tuple(_state(sdata, n, old_values, new) for n in new)
                assert all(s != "absent" for n, s in zip(new, states, strict=True) if n in old_values), (point, states)
            assert sdata.has_consolidated_metadata()
            _assert_clean(store)
            _assert_consolidated_consistent(store)
            assert {k: v for k, v in _snapshot(store).items() if k.startswith("images")} == images
        # Killed before each step outside the staging folder (fallback: each rename), in order: all old, then one
        # name after the other new.
        n_new = [states.count("new") for states in progress]
        assert n_new == sorted(n_new), progress
        if mode == "relabel":
            assert progress[0] == ("old", "absent")
            assert set(n_new) == {0, 1, 2}, progress
            continue
        assert progress[0] == ("old", "old", "old", "absent")
        if mode == "exchange":
            assert set(n_new) == {0, 1, 2, 3, 4}, progress
        else:  # between the two renames of a swap, the name is empty (until remove_leftovers)
            assert progress == [
                ("old", "old", "old", "absent"),
                ("absent", "old", "old", "absent"),
                ("new",) + ("old",) * 2 + ("absent",),
            ]
