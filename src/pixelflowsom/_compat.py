"""The one place where private scikit-learn API is imported.

scikit-learn's declarative parameter validation (``Interval``, ``StrOptions``, ``_fit_context``) and the checks of
``n_features_in_`` / ``feature_names_in_`` for inputs that :func:`~sklearn.utils.validation.validate_data` must not
convert (lazy dask arrays) are private API. Keeping the imports here means a scikit-learn release that moves them
breaks one file, not the package.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _check_feature_names, _check_n_features

__all__ = ["HasMethods", "Interval", "StrOptions", "_check_feature_names", "_check_n_features", "_fit_context"]
