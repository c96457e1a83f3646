"""Revise metaclusters after clustering: merge, move SOM nodes, split, name, and ark Pixie's mapping CSV.

The metaclusters of a fitted model are a map from SOM nodes to metaclusters. Revising them never touches the SOM:

- :func:`revise_mapping` revises such a map given as 1-based ids (as label images hold them): merge metaclusters,
  move nodes, name metaclusters; it needs nothing else, so the command line revises a store's labels without the model;
- :func:`update_metaclusters` revises a fitted :class:`~pixelflowsom.PixelFlowSOM` (or a ``Pipeline`` ending in one)
  and can also split a metacluster, re-metaclustering its nodes' codes;
- :func:`read_pixie_mapping` and :func:`write_pixie_mapping` read and write the map as ark-analysis's Pixie does
  (``pixel_som_cluster``, ``pixel_meta_cluster``, ``pixel_meta_cluster_rename``, 1-based), so that a map edited in
  Pixie's GUI or a spreadsheet applies here, and ours opens there.

**Numbering.** Metacluster ids stay dense, ``1..k``. A merged group takes the place of its smallest id; the parts of a
split metacluster beyond the first take new ids after the largest; a node moved to ``k + 1`` starts a new metacluster.
Then metaclusters left without nodes are dropped and the ids renumbered in their order: metacluster ``i`` keeps its
id unless a smaller id disappeared. ``renumbering`` (returned alongside) says which old id became which new one.

**Names** follow their metacluster through the renumbering; a merged group keeps the name of its smallest named
member, the parts of a split beyond the first start unnamed; ``names`` given to the call are keyed by the ids AFTER
it (the ids the returned model and the relabelled images hold) and override; an empty name removes one.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path

import numpy as np

#: The columns of ark-analysis Pixie's pixel cluster mapping CSV (``pixel_meta_cluster_mapping.csv``).
PIXIE_COLUMNS = ("pixel_som_cluster", "pixel_meta_cluster", "pixel_meta_cluster_rename")


def _as_id(value, what: str, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral | np.integer):
        raise TypeError(f"{what} {value!r} must be an integer id (1-based, as in the label images).")
    value = int(value)
    if value < 1 or (upper is not None and value > upper):
        bound = f"1..{upper}" if upper is not None else ">= 1"
        raise ValueError(f"{what} {value} is not a valid id; ids are {bound} (1-based, as in the label images).")
    return value


def check_mapping(mapping) -> np.ndarray:
    """Check a node -> metacluster map of 1-based ids and return it as an int64 array.

    Parameters
    ----------
    mapping : array-like of int, shape (n_nodes,)
        ``mapping[i]`` is the 1-based metacluster of the 1-based SOM node ``i + 1``.

    Returns
    -------
    ndarray of shape (n_nodes,)
        The map, int64.

    Raises
    ------
    TypeError, ValueError
        Not a 1D array of integers >= 1, or empty.
    """
    array = np.asarray(mapping)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"The node -> metacluster map must be a non-empty 1D array, got shape {array.shape}.")
    if array.dtype.kind not in "iu":
        raise TypeError(f"The node -> metacluster map must hold integer ids, got dtype {array.dtype}.")
    if array.min() < 1:
        raise ValueError(f"The node -> metacluster map holds id {int(array.min())}; metacluster ids are 1-based.")
    return array.astype(np.int64)


def _check_names(names, what: str) -> dict[int, str]:
    if names is None:
        return {}
    if not isinstance(names, Mapping):
        raise TypeError(f"{what} must be a mapping of 1-based metacluster id to name, got {type(names).__name__}.")
    out = {}
    for key, value in names.items():
        key = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(value, str):
            raise TypeError(f"The name of metacluster {key!r} must be a str, got {value!r}.")
        out[_as_id(key, "Metacluster")] = value
    return out


def revise_mapping(mapping, *, merge=(), move=None, names=None, old_names=None):
    """Merge metaclusters, move SOM nodes and name metaclusters in a node -> metacluster map of 1-based ids.

    See the module's documentation for the numbering of the result.

    Parameters
    ----------
    mapping : array-like of int, shape (n_nodes,)
        ``mapping[i]``: the 1-based metacluster of the 1-based SOM node ``i + 1`` (the lookup from a SOM-node label
        image to its metacluster label image).
    merge : sequence of sequences of int, default=()
        Groups of metacluster ids to merge, e.g. ``[[2, 5], [3, 7, 8]]``; groups may not share an id.
    move : mapping of int to int or None, default=None
        ``{node: metacluster}``: SOM nodes (1-based) to move, to an existing metacluster or to ``k + 1`` (a new one).
        Applied before ``merge``, by the ids before the call.
    names : mapping of int to str or None, default=None
        Names by metacluster id AFTER the revision; ``""`` removes a name.
    old_names : mapping of int to str or None, default=None
        The names the metaclusters had, by their ids before the revision; they follow their metacluster.

    Returns
    -------
    mapping : ndarray of shape (n_nodes,)
        The revised map, 1-based ids ``1..k'``, dense.
    names : dict of int to str
        The names of the revised metaclusters, by new id.
    renumbering : dict of int to int
        New id of every old metacluster id that still has nodes (a merged id maps to its group's id).

    Raises
    ------
    TypeError, ValueError
        Ids that are not integers, not in the map (a metacluster that no node belongs to) or out of range; a node
        moved twice; an id in two merge groups or a group of fewer than two ids.

    Examples
    --------
    >>> from pixelflowsom import revise_mapping
    >>> mapping, names, renumbering = revise_mapping([1, 2, 3, 3, 4], merge=[[2, 4]], names={2: "T cells"})
    >>> mapping.tolist(), names, renumbering
    ([1, 2, 3, 3, 2], {2: 'T cells'}, {1: 1, 2: 2, 3: 3, 4: 2})
    """
    mapping = check_mapping(mapping)
    n_nodes = mapping.size
    k = int(mapping.max())
    present = set(np.unique(mapping).tolist())
    old_names = _check_names(old_names, "old_names")
    out = mapping.copy()
    for node, target in (move or {}).items():
        node = _as_id(node, "SOM node", n_nodes)
        target = _as_id(target, f"Target metacluster of node {node}", k + 1)
        out[node - 1] = target
    groups, seen = [], set()
    for group in merge or ():
        group = [_as_id(m, "Metacluster") for m in group]
        if len(set(group)) < 2:
            raise ValueError(f"Merge group {group} must name at least two different metaclusters.")
        for m in group:
            if m not in present and m != k + 1:
                raise ValueError(f"Metacluster {m} to merge has no SOM node; the metaclusters are {sorted(present)}.")
            if m in seen:
                raise ValueError(f"Metacluster {m} is in two merge groups; put it in one.")
            seen.add(m)
        groups.append(sorted(group))
    into = {m: group[0] for group in groups for m in group}
    out = np.array([into.get(int(m), int(m)) for m in out], dtype=np.int64)
    return _renumber(mapping, out, old_names, names, into)


def _renumber(before, after, old_names, names, into):
    """Dense ids for ``after`` (ids in their order), names carried and overridden, and the old -> new ids."""
    kept = np.unique(after)
    new_id = {int(m): i + 1 for i, m in enumerate(kept)}
    revised = np.array([new_id[int(m)] for m in after], dtype=np.int64)
    renumbering = {}
    for old in np.unique(before).tolist():
        target = into.get(old, old)
        if target in new_id and np.any(after == target):
            renumbering[old] = new_id[target]
    carried = {}
    for old, name in sorted(old_names.items()):
        target = renumbering.get(old)
        if target is not None and name and target not in carried:
            carried[target] = name
    for new, name in _check_names(names, "names").items():
        if new > len(kept):
            raise ValueError(f"names: metacluster {new} does not exist after the revision; the ids are 1..{len(kept)}.")
        if name:
            carried[new] = name
        else:
            carried.pop(new, None)
    return revised, dict(sorted(carried.items())), renumbering


def update_metaclusters(model, *, merge=(), move=None, split=None, names=None, random_state=None):
    """Return a copy of a fitted model with revised metaclusters: merged, split, nodes moved, named.

    The SOM (codes, grid, node labels) is never changed; only the node -> metacluster map, the labels derived from
    it, ``n_clusters_`` and ``metacluster_names_``. The input model is left as it was. The order: ``move``, then
    ``split``, then ``merge`` (all by the ids before the call), then the dense renumbering described in the module's
    documentation, then ``names`` (by the ids after the call).

    Parameters
    ----------
    model : PixelFlowSOM or sklearn.pipeline.Pipeline
        A fitted :class:`~pixelflowsom.PixelFlowSOM`, or a fitted ``Pipeline`` ending in one (the copy is a Pipeline
        with the revised last step).
    merge : sequence of sequences of int, default=()
        Groups of 1-based metacluster ids to merge into one, e.g. ``[[2, 5]]``.
    move : mapping of int to int or None, default=None
        ``{node: metacluster}``: 1-based SOM nodes to move to an existing metacluster or to ``n_clusters_ + 1``.
    split : mapping of int to int or None, default=None
        ``{metacluster: k}``: re-metacluster the nodes of a metacluster into ``k`` parts with (a clone of) the
        model's metaclustering on their codes; the first part keeps the id, the others get new ones.
    names : mapping of int to str or None, default=None
        Names by 1-based metacluster id after the revision, kept in ``metacluster_names_``.
    random_state : int, RandomState instance or None, default=None
        Seeds a metaclustering with a ``random_state`` parameter for ``split``.

    Returns
    -------
    PixelFlowSOM or Pipeline
        The revised copy.

    Raises
    ------
    TypeError, ValueError
        A model that is not fitted, or bad ids (see :func:`revise_mapping`); a split into fewer than 2 parts or into
        more parts than the metacluster has nodes.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import PixelFlowSOM, update_metaclusters
    >>> X = np.repeat(np.eye(4) * 5, 50, axis=0) + np.random.default_rng(0).normal(0, 0.2, size=(200, 4))
    >>> model = PixelFlowSOM(n_clusters=4, xdim=3, ydim=3, fraction=1.0, random_state=0).fit(X)
    >>> merged = update_metaclusters(model, merge=[[1, 2]], names={1: "CD3+"})
    >>> merged.n_clusters_, merged.metacluster_names_, model.n_clusters_
    (3, {1: 'CD3+'}, 4)
    >>> bool(np.array_equal(merged.codes_, model.codes_))
    True
    """
    from sklearn.base import clone
    from sklearn.utils import check_random_state

    from ._estimator import PixelFlowSOM

    pipeline = hasattr(model, "steps")
    som = model[-1] if pipeline else model
    if not isinstance(som, PixelFlowSOM) or not hasattr(som, "node_metacluster_"):
        raise TypeError(
            f"update_metaclusters takes a fitted PixelFlowSOM (or a Pipeline ending in one), got {type(som).__name__}."
        )
    before = som.node_metacluster_ + 1
    k = int(before.max())
    mapping = before.copy()
    old_names = dict(getattr(som, "metacluster_names_", {}))
    for node, target in (move or {}).items():
        node = _as_id(node, "SOM node", mapping.size)
        mapping[node - 1] = _as_id(target, f"Target metacluster of node {node}", k + 1)
    next_id = int(mapping.max()) + 1
    rng = check_random_state(random_state)
    for metacluster, parts in (split or {}).items():
        metacluster = _as_id(metacluster, "Metacluster to split", k)
        members = np.flatnonzero(mapping == metacluster)
        if isinstance(parts, bool) or not isinstance(parts, Integral | np.integer) or not 2 <= parts <= members.size:
            raise ValueError(
                f"split={{{metacluster}: {parts!r}}}: metacluster {metacluster} has {members.size} SOM node(s); split "
                f"it into 2..{members.size} parts."
            )
        clusterer = clone(som.metaclustering_)
        params = clusterer.get_params()
        if "n_clusters" not in params:
            raise TypeError(f"The model's metaclustering {type(clusterer).__name__} has no n_clusters to split with.")
        clusterer.set_params(n_clusters=int(parts))
        if "random_state" in params:
            clusterer.set_params(random_state=rng.randint(np.iinfo(np.int32).max))
        parts_of = np.asarray(clusterer.fit_predict(som.codes_[members]))
        order = {p: i for i, p in enumerate(dict.fromkeys(parts_of.tolist()))}  # the part of the first node keeps id
        for node, part in zip(members, parts_of, strict=True):
            if order[int(part)] > 0:
                mapping[node] = next_id + order[int(part)] - 1
        next_id += int(parts) - 1
    revised, new_names, _ = revise_mapping(mapping, merge=merge, names=names, old_names=old_names)
    out = copy.deepcopy(model)
    target = out[-1] if pipeline else out
    target.node_metacluster_ = revised - 1
    target.n_clusters_ = int(revised.max())
    target.metacluster_names_ = new_names
    target.labels_ = target.node_metacluster_[target.node_labels_]
    return out


def read_pixie_mapping(path, n_nodes: int | None = None):
    """Read an ark Pixie pixel mapping CSV: the node -> metacluster map and the metacluster names.

    Parameters
    ----------
    path : str or os.PathLike
        A CSV with the columns ``pixel_som_cluster`` (1-based SOM node), ``pixel_meta_cluster`` (1-based metacluster)
        and, optionally, ``pixel_meta_cluster_rename`` (its name), one row per node; other columns are ignored.
    n_nodes : int or None, default=None
        The number of SOM nodes of the labels it is for: every node ``1..n_nodes`` needs exactly one row.

    Returns
    -------
    mapping : ndarray of shape (n_nodes,)
        The 1-based metacluster of every node, renumbered densely in the order of the file's ids.
    names : dict of int to str
        The names by (renumbered) id; a name equal to the file's id (Pixie's default) is no name.

    Raises
    ------
    FileNotFoundError, ValueError
        The file does not exist, misses a column, has a non-integer id, a node twice or missing, nodes beyond
        ``n_nodes``, or two names for one metacluster.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mapping file {str(path)!r} does not exist.")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in PIXIE_COLUMNS[:2] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"Mapping file {str(path)!r} has no column(s) {missing}; a Pixie mapping has the columns "
                f"{list(PIXIE_COLUMNS)} (found {reader.fieldnames})."
            )
        rows = list(reader)
    nodes, metas, file_names = {}, [], {}
    for line, row in enumerate(rows, start=2):
        try:
            node, meta = int(row[PIXIE_COLUMNS[0]]), int(row[PIXIE_COLUMNS[1]])
        except (TypeError, ValueError):
            raise ValueError(
                f"Mapping file {str(path)!r}, line {line}: {PIXIE_COLUMNS[0]} and {PIXIE_COLUMNS[1]} must be integers, "
                f"got {row[PIXIE_COLUMNS[0]]!r} and {row[PIXIE_COLUMNS[1]]!r}."
            ) from None
        if node < 1 or meta < 1:
            raise ValueError(f"Mapping file {str(path)!r}, line {line}: ids are 1-based, got node {node}, meta {meta}.")
        if node in nodes:
            raise ValueError(f"Mapping file {str(path)!r}, line {line}: SOM node {node} is listed twice.")
        nodes[node] = meta
        name = (row.get(PIXIE_COLUMNS[2]) or "").strip()
        if name and name != str(meta):
            if file_names.get(meta, name) != name:
                raise ValueError(
                    f"Mapping file {str(path)!r}: metacluster {meta} is named both {file_names[meta]!r} and {name!r}."
                )
            file_names[meta] = name
        metas.append(meta)
    count = n_nodes if n_nodes is not None else max(nodes, default=0)
    extra = sorted(n for n in nodes if n > count)
    absent = [n for n in range(1, count + 1) if n not in nodes]
    if extra or absent or not nodes:
        raise ValueError(
            f"Mapping file {str(path)!r} does not fit these labels: they have {count} SOM nodes (1..{count}); the file "
            + (f"lists nodes {extra[:5]} beyond them" if extra else f"misses nodes {absent[:5]}")
            + (f" and {len(extra or absent) - 5} more" if len(extra or absent) > 5 else "")
            + ". Export the mapping of this store with --export-mapping and edit that."
        )
    raw = np.array([nodes[n] for n in range(1, count + 1)], dtype=np.int64)
    mapping, names, _ = revise_mapping(raw, old_names=file_names)
    return mapping, names


def write_pixie_mapping(path, mapping, names=None) -> None:
    """Write a node -> metacluster map as ark Pixie's pixel mapping CSV (1-based ids, one row per node).

    Parameters
    ----------
    path : str or os.PathLike
        The CSV to write.
    mapping : array-like of int, shape (n_nodes,)
        The 1-based metacluster of every 1-based node.
    names : mapping of int to str or None, default=None
        Metacluster names; an unnamed metacluster is named by its id, as Pixie does.
    """
    mapping = check_mapping(mapping)
    names = _check_names(names, "names")
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PIXIE_COLUMNS)
        for node, meta in enumerate(mapping.tolist(), start=1):
            writer.writerow([node, meta, names.get(meta, str(meta))])
