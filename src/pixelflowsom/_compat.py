"""The one place where private scikit-learn API is imported.

scikit-learn's declarative parameter validation (``Interval``, ``StrOptions``, ``_fit_context``), the checks of
``n_features_in_`` / ``feature_names_in_`` for inputs that :func:`~sklearn.utils.validation.validate_data` must not
convert (lazy dask arrays) and the output container of the ``set_output`` configuration (applied by hand to tables
only, since label images and lazy arrays must not become DataFrames) are private API. Keeping the imports here
means a scikit-learn release that moves them breaks one file, not the package.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils._set_output import _get_container_adapter
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


__all__ = [
    "HasMethods",
    "Interval",
    "StrOptions",
    "_check_feature_names",
    "_check_n_features",
    "_fit_context",
    "_get_container_adapter",
    "set_output_config",
]
