"""The one place where private scikit-learn API is imported or called.

scikit-learn's declarative parameter validation (``Interval``, ``StrOptions``, ``_fit_context``, an estimator's
``_validate_params``), the checks of ``n_features_in_`` / ``feature_names_in_`` for inputs that
:func:`~sklearn.utils.validation.validate_data` must not convert (lazy dask arrays) and the output container of the
``set_output`` configuration (applied by hand to tables only, since label images and lazy arrays must not become
DataFrames) are private API. Keeping the imports here means a scikit-learn release that moves them breaks one file, not
the package.
"""

# Public alternatives: none yet for _fit_context and the constraints (scikit-learn's own estimators use them; switch
# if they become public).
from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

# Public alternative: none yet (``set_output``'s container is private); switch if scikit-learn exposes the adapters.
from sklearn.utils._set_output import _get_container_adapter

# Public alternative: ``sklearn.utils.validation.validate_data(estimator, X, reset=reset, skip_check_array=True)``
# (scikit-learn >= 1.6) checks the same without converting X; the callers may switch to it.
from sklearn.utils.validation import _check_feature_names, _check_n_features


def set_output_config(estimator, transform):
    """Store ``estimator.set_output(transform=...)``'s configuration where scikit-learn looks for it; return it.

    For estimators that opt out of scikit-learn's automatic wrapping of ``transform`` (``auto_wrap_output_keys=None``)
    because their image outputs must stay images, and apply the configuration to tables themselves.
    """
    if transform is None:
        return estimator
    if transform not in ("default", "pandas", "polars"):
        raise ValueError(f"transform={transform!r} must be 'default', 'pandas', 'polars' or None.")
    estimator._sklearn_output_config = {"transform": transform}
    return estimator


def validate_params(estimator) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints``, as its ``fit`` does first.

    For an estimator whose ``fit`` is never called (its parameters are checked before other work uses them). It calls
    ``BaseEstimator._validate_params``; public alternative: none yet (``sklearn.utils._param_validation`` is private
    too); switch to a public method if scikit-learn adds one.

    Parameters
    ----------
    estimator : sklearn.base.BaseEstimator
        The estimator, with ``_parameter_constraints``.

    Raises
    ------
    sklearn.utils._param_validation.InvalidParameterError
        A parameter violates its constraints (a ``ValueError`` and ``TypeError``).
    """
    estimator._validate_params()


__all__ = [
    "HasMethods",
    "Interval",
    "StrOptions",
    "_check_feature_names",
    "_check_n_features",
    "_fit_context",
    "_get_container_adapter",
    "set_output_config",
    "validate_params",
]
