"""Saving estimators with pickle or joblib: the pixelflowsom version travels with them, a warning if it differs.

scikit-learn records its version in the pickles of its own estimators and warns with
:class:`sklearn.exceptions.InconsistentVersionWarning` when one is loaded by another version; it does that only for
classes in ``sklearn``. :class:`VersionedPickleMixin` does the same for pixelflowsom's estimators, with the
pixelflowsom version, so that a model saved by one release and loaded by another says so instead of silently
predicting with code it was not fitted for.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

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
