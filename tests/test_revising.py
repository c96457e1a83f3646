"""Tests of pixelflowsom._revising: metaclusters merged, moved, split and named, and Pixie's mapping CSV."""

import joblib
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.pipeline import Pipeline

from pixelflowsom import (
    PixelFlowSOM,
    PixelPreprocessor,
    read_pixie_mapping,
    revise_mapping,
    update_metaclusters,
    write_pixie_mapping,
)
from pixelflowsom._synthetic import make_synthetic_image

from .conftest import image_reference, make_blobs


@pytest.fixture(scope="module")
def fitted():
    X, _ = make_blobs(n=1500, p=4, n_centers=5, seed=3)
    return PixelFlowSOM(n_clusters=5, xdim=4, ydim=4, fraction=1.0, random_state=0).fit(X), X


# --------------------------------------------------------------------------------------------- revise_mapping


def test_merge_takes_the_smallest_id_and_renumbers_densely():
    mapping, names, renumbering = revise_mapping([1, 2, 3, 4, 5, 5], merge=[[4, 2]], old_names={5: "B", 3: "T"})
    # 2 and 4 become 2; 3 stays 3; 5 becomes 4 (4 disappeared)
    assert mapping.tolist() == [1, 2, 3, 2, 4, 4]
    assert renumbering == {1: 1, 2: 2, 3: 3, 4: 2, 5: 4}
    assert names == {3: "T", 4: "B"}


def test_move_to_a_new_metacluster_and_empty_ones_vanish():
    mapping, _, renumbering = revise_mapping([1, 1, 2, 3], move={3: 1, 4: 4})
    # node 3 leaves metacluster 2 (now empty), node 4 starts metacluster 4 and leaves 3 empty
    assert mapping.tolist() == [1, 1, 1, 2]
    assert renumbering == {1: 1}


def test_names_are_by_new_id_and_empty_removes():
    _, names, _ = revise_mapping([1, 2, 3], merge=[[1, 2]], names={2: "tumour", 1: ""}, old_names={1: "old"})
    assert names == {2: "tumour"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"merge": [[1]]}, ValueError, "at least two different metaclusters"),
        ({"merge": [[1, 9]]}, ValueError, "Metacluster 9 to merge has no SOM node; the metaclusters are"),
        ({"merge": [[1, 2], [2, 3]]}, ValueError, "Metacluster 2 is in two merge groups"),
        ({"merge": [[1, "2"]]}, TypeError, "must be an integer id"),
        ({"move": {7: 1}}, ValueError, r"SOM node 7 is not a valid id; ids are 1..4"),
        ({"move": {1: 6}}, ValueError, r"Target metacluster of node 1 6 is not a valid id; ids are 1..4"),
        ({"names": {5: "x"}}, ValueError, "metacluster 5 does not exist after the revision"),
        ({"names": {1: 3}}, TypeError, "must be a str"),
    ],
)
def test_revise_mapping_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        revise_mapping([1, 2, 3, 3], **kwargs)


# --------------------------------------------------------------------------------------------- update_metaclusters


def test_update_never_changes_the_som_and_relabels_from_the_nodes(fitted):
    model, X = fitted
    before = {
        name: np.copy(getattr(model, name)) for name in ("codes_", "node_metacluster_", "labels_", "node_labels_")
    }
    revised = update_metaclusters(model, merge=[[1, 3]], move={2: 5}, names={1: "merged"})
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(model, name), value)  # the input is unchanged
    np.testing.assert_array_equal(revised.codes_, model.codes_)
    np.testing.assert_array_equal(revised.node_labels_, model.node_labels_)
    # the revision, computed here from the old map: node 2 -> metacluster 5, then 1 and 3 merged, renumbered
    old = model.node_metacluster_ + 1
    expected = old.copy()
    expected[1] = 5
    expected[expected == 3] = 1
    dense = {m: i + 1 for i, m in enumerate(np.unique(expected))}
    expected = np.array([dense[m] for m in expected])
    np.testing.assert_array_equal(revised.node_metacluster_ + 1, expected)
    assert revised.n_clusters_ == len(dense)
    assert revised.metacluster_names_ == {1: "merged"}
    # every row's metacluster is the new map applied to its nearest node (float64 brute force in the test)
    nodes = np.argmin(((X[:, None, :] - model.codes_[None].astype(np.float64)) ** 2).sum(axis=2), axis=1)
    np.testing.assert_array_equal(revised.predict(X), expected[nodes] - 1)
    np.testing.assert_array_equal(revised.labels_, expected[nodes] - 1)


def test_split_re_metaclusters_the_nodes_of_one_metacluster(fitted):
    model, _ = fitted
    biggest = int(np.bincount(model.node_metacluster_).argmax()) + 1
    members = np.flatnonzero(model.node_metacluster_ + 1 == biggest)
    revised = update_metaclusters(model, split={biggest: 2})
    parts = AgglomerativeClustering(n_clusters=2, linkage="average").fit_predict(model.codes_[members])
    new = revised.node_metacluster_ + 1
    assert revised.n_clusters_ == model.n_clusters_ + 1
    assert set(new[members[parts == parts[0]]]) == {biggest}  # the part of the first node keeps the id
    assert set(new[members[parts != parts[0]]]) == {model.n_clusters_ + 1}  # the other part is appended
    others = np.setdiff1d(np.arange(new.size), members)
    np.testing.assert_array_equal(new[others], model.node_metacluster_[others] + 1)
    with pytest.raises(ValueError, match=rf"metacluster {biggest} has {members.size} SOM node\(s\); split it into"):
        update_metaclusters(model, split={biggest: members.size + 1})


def test_names_survive_joblib_and_pipelines_are_revised(tmp_path):
    image, _ = make_synthetic_image((48, 48), n_channels=4, n_phenotypes=3, seed=1)
    pipe = Pipeline([("pre", PixelPreprocessor(sigma=None)), ("som", PixelFlowSOM(n_clusters=3, xdim=3, ydim=3))])
    pipe.set_params(som__random_state=0).fit(image)
    revised = update_metaclusters(pipe, merge=[[2, 3]], names={2: "stroma"})
    assert isinstance(revised, Pipeline)
    assert pipe[-1].n_clusters_ == 3
    joblib.dump(revised, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    assert loaded[-1].metacluster_names_ == {2: "stroma"}
    som = loaded[-1]
    expected = image_reference(pipe[0].transform(image).compute(), som.codes_, som.node_metacluster_, som.channels_)
    np.testing.assert_array_equal(loaded.transform(image).values, expected)
    assert set(np.unique(expected[1])) <= {0, 1, 2}


def test_update_needs_a_fitted_model():
    with pytest.raises(TypeError, match="takes a fitted PixelFlowSOM"):
        update_metaclusters(PixelFlowSOM(), merge=[[1, 2]])


# --------------------------------------------------------------------------------------------- Pixie's CSV


def test_pixie_csv_round_trips(tmp_path):
    mapping = np.array([1, 2, 2, 3, 1, 3])
    write_pixie_mapping(tmp_path / "map.csv", mapping, {2: "CD8 T"})
    lines = (tmp_path / "map.csv").read_text().splitlines()
    assert lines[0] == "pixel_som_cluster,pixel_meta_cluster,pixel_meta_cluster_rename"
    assert lines[2] == "2,2,CD8 T"
    assert lines[1] == "1,1,1"  # unnamed: named by its id, as Pixie does
    read, names = read_pixie_mapping(tmp_path / "map.csv", n_nodes=6)
    np.testing.assert_array_equal(read, mapping)
    assert names == {2: "CD8 T"}


def test_pixie_csv_edited_in_a_spreadsheet(tmp_path):
    """Rows in any order, extra columns, merged ids leaving gaps: renumbered densely, names kept."""
    text = "pixel_meta_cluster_rename,pixel_som_cluster,count,pixel_meta_cluster\nB,3,10,7\ntumour,1,5,2\nB,2,1,7\n"
    (tmp_path / "pixie.csv").write_text(text)
    mapping, names = read_pixie_mapping(tmp_path / "pixie.csv", n_nodes=3)
    assert mapping.tolist() == [1, 2, 2]
    assert names == {1: "tumour", 2: "B"}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pixel_som_cluster,meta\n1,1\n", r"has no column\(s\) \['pixel_meta_cluster'\]"),
        ("pixel_som_cluster,pixel_meta_cluster\n1,a\n", "line 2: pixel_som_cluster and pixel_meta_cluster must be"),
        ("pixel_som_cluster,pixel_meta_cluster\n1,1\n1,2\n", "SOM node 1 is listed twice"),
        ("pixel_som_cluster,pixel_meta_cluster\n1,1\n2,1\n", r"they have 3 SOM nodes \(1..3\); the file misses nodes"),
        ("pixel_som_cluster,pixel_meta_cluster\n1,1\n2,1\n3,1\n4,1\n", r"lists nodes \[4\] beyond them"),
        (
            "pixel_som_cluster,pixel_meta_cluster,pixel_meta_cluster_rename\n1,1,a\n2,1,b\n3,2,2\n",
            "metacluster 1 is named both 'a' and 'b'",
        ),
    ],
)
def test_pixie_csv_errors(tmp_path, text, match):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_pixie_mapping(tmp_path / "bad.csv", n_nodes=3)
