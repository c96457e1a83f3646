"""Saving and loading models: skops files that load only trusted types, and the pixelflowsom version they carry.

A model file is shared: a colleague's, or one published with a paper's data. Loading a pickle (``pickle``,
``joblib``) runs whatever code the file names, so pixelflowsom saves models in skops' format, which loads only the
types the reader trusts (scikit-learn's persistence guide recommends it for exactly this case):
:func:`save_model` writes one, :func:`load_model` reads one, trusting skops' defaults (numpy, scipy, scikit-learn,
Python's builtin containers) and :data:`TRUSTED_TYPES`, pixelflowsom's own estimators; a file naming any other type
is refused before anything in it is built, with the type named.

scikit-learn records its version in the pickles of its own estimators and warns with
:class:`sklearn.exceptions.InconsistentVersionWarning` when one is loaded by another version; it does that only for
classes in ``sklearn``. :class:`VersionedPickleMixin` does the same for pixelflowsom's estimators, with the
pixelflowsom version, in pickles and skops files alike (skops saves an object's ``__getstate__`` and restores it with
``__setstate__``), so that a model saved by one release and loaded by another says so instead of silently predicting
with code it was not fitted for.
"""

from __future__ import annotations

import os
import uuid
import warnings
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_STATE_KEY = "_pixelflowsom_version"


def package_version() -> str:
    """Return the installed pixelflowsom version (``"0.0.0"`` when running from a source tree not installed)."""
    try:
        return version("pixelflowsom")
    except PackageNotFoundError:  # pragma: no cover - not installed
        return "0.0.0"


class InconsistentVersionWarning(UserWarning):
    """Warning raised when an estimator is unpickled with another pixelflowsom version than it was saved with.

    Parameters
    ----------
    estimator_name : str
        Class name of the estimator.
    current_version : str
        The pixelflowsom version loading it.
    original_version : str
        The pixelflowsom version that saved it (``"unknown"`` for a pickle without one).
    """

    def __init__(self, *, estimator_name, current_version, original_version):
        self.estimator_name = estimator_name
        self.current_version = current_version
        self.original_version = original_version

    def __str__(self):
        return (
            f"Trying to unpickle estimator {self.estimator_name} from pixelflowsom version {self.original_version} "
            f"when using version {self.current_version}. This might lead to breaking code or invalid results; refit "
            "the model with this version, or install the version that saved it."
        )


class VersionedPickleMixin:
    """Record the pixelflowsom version in the pickled state; warn when it differs on unpickling.

    Put it left of :class:`~sklearn.base.BaseEstimator` in the bases, whose ``__getstate__`` / ``__setstate__`` it
    extends.
    """

    def __getstate__(self):
        return dict(super().__getstate__(), **{_STATE_KEY: package_version()})

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop(_STATE_KEY, "unknown")
        current = package_version()
        if saved != current:
            warnings.warn(
                InconsistentVersionWarning(
                    estimator_name=type(self).__name__, current_version=current, original_version=saved
                ),
                stacklevel=2,
            )
        super().__setstate__(state)


#: The types of a pixelflowsom model file that :func:`load_model` trusts beyond skops' defaults (numpy arrays and
#: scalars, scipy, scikit-learn's estimators such as :class:`~sklearn.pipeline.Pipeline`, Python's builtin containers):
#: pixelflowsom's estimators and the record of the chosen number of metaclusters. Their state is arrays and plain
#: values only (a seed is an int; no functions).
TRUSTED_TYPES = (
    "pixelflowsom._estimator.PixelFlowSOM",
    "pixelflowsom._preprocessing.PixelPreprocessor",
    "pixelflowsom._metacluster.ConsensusClustering",
    "pixelflowsom._metacluster.NClustersChoice",
)


def save_model(model, file) -> Path:
    """Save a model in skops' format, which :func:`load_model` loads without running code from the file.

    The file is written next to its final path and renamed into place: a process killed while saving leaves the old
    file, or none, never a part of one.

    Parameters
    ----------
    model : estimator
        Typically a fitted :class:`~pixelflowsom.PixelFlowSOM`, or a :class:`~sklearn.pipeline.Pipeline` ending in
        one (e.g. after a :class:`~pixelflowsom.PixelPreprocessor`). Any object skops can save is accepted; types
        outside skops' defaults and :data:`TRUSTED_TYPES` will need ``trusted=`` to load.
    file : str or path-like
        Where to write; by convention it ends in ``.skops``. Its folder must exist.

    Returns
    -------
    pathlib.Path
        ``file``.

    See Also
    --------
    load_model : Load it.
    """
    import skops.io as sio

    path = Path(file)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot save the model to {str(path)!r}: folder {str(path.parent)!r} does not exist.")
    data = sio.dumps(model, compression=zipfile.ZIP_DEFLATED)
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex}.partial"
    try:
        with open(staging, "xb") as stream:  # the permissions of any new file (mkstemp's would be 0600)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def untrusted_types(file, trusted=()) -> list[str]:
    """Return the types a skops file names that :func:`load_model` would refuse, without building anything in it.

    Parameters
    ----------
    file : str or path-like
        A skops file.
    trusted : sequence of str, default=()
        Types trusted beyond skops' defaults and :data:`TRUSTED_TYPES` (``"module.QualifiedName"``).

    Returns
    -------
    list of str
        The refused types, sorted; empty when the file loads.

    Raises
    ------
    ValueError
        ``file`` is not a skops file (e.g. a pickle).
    """
    import skops.io as sio

    path = _check_skops_file(file)
    allowed = set(TRUSTED_TYPES) | set(_type_names(trusted))
    return sorted(set(sio.get_untrusted_types(file=path)) - allowed)


def load_model(file, *, trusted=()):
    """Load a model saved by :func:`save_model` (or ``skops.io.dump``), trusting only known types.

    Nothing in the file is built before every type it names is checked: skops' defaults (numpy, scipy,
    scikit-learn, Python's builtin containers), :data:`TRUSTED_TYPES` and ``trusted``. A model saved by another
    pixelflowsom version loads with an :class:`~pixelflowsom.InconsistentVersionWarning`.

    Parameters
    ----------
    file : str or path-like
        A skops file.
    trusted : sequence of str, default=()
        Further types to trust, as ``"module.QualifiedName"`` (as the refusal names them). Trust a type only if you
        trust the file's author: a function or class named here runs when the model is loaded or used.

    Returns
    -------
    object
        The saved model.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        ``file`` is not a skops file, e.g. a pickle; load a pickle only from someone you trust, with
        :func:`joblib.load`.
    TypeError
        The file names a type not trusted; the message names it.

    See Also
    --------
    save_model : Write one.
    untrusted_types : What would be refused, without loading.

    Examples
    --------
    >>> from pixelflowsom import PixelFlowSOM, load_model, save_model
    >>> import numpy as np, tempfile, pathlib
    >>> X = np.random.default_rng(0).random((500, 3), dtype=np.float32)
    >>> model = PixelFlowSOM(n_clusters=3, xdim=4, ydim=4, random_state=0).fit(X)
    >>> path = save_model(model, pathlib.Path(tempfile.mkdtemp()) / "model.skops")
    >>> (load_model(path).predict(X) == model.predict(X)).all()
    np.True_
    """
    import skops.io as sio

    trusted = _type_names(trusted)
    refused = untrusted_types(file, trusted)
    if refused:
        raise TypeError(
            f"{str(file)!r} names types that pixelflowsom does not trust: {refused}. Loading them could run code from "
            "the file. Load it only if you trust its author, passing trusted=[...] with these names."
        )
    # The same allow-list again, for skops to enforce as it builds.
    return sio.load(Path(file), trusted=[*TRUSTED_TYPES, *trusted])


def _check_skops_file(file) -> Path:
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"No model file {str(path)!r}.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{str(path)!r} is not a skops file (it may be a pickle, e.g. from joblib.dump: loading a pickle runs "
            "whatever code it names). Load a pickle only from someone you trust, with joblib.load, and save it again "
            "with pixelflowsom.save_model."
        )
    return path


def _type_names(trusted) -> list[str]:
    if isinstance(trusted, str):
        raise TypeError(f"trusted={trusted!r} must be a sequence of type names, e.g. [{trusted!r}].")
    names = list(trusted)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"trusted must hold type names as str ('module.QualifiedName'), got {name!r}.")
    return names
