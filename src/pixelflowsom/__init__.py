"""pixelflowsom: fast, out-of-core FlowSOM pixel clustering of multiplexed tissue images.

The public surface:

* :class:`PixelFlowSOM`, the scikit-learn estimator;
* :class:`ConsensusClustering`, R FlowSOM's consensus metaclustering as an estimator;
* :class:`PixelPreprocessor`, ``harpy.im.pixel_clustering_preprocess`` as a lazy scikit-learn transformer;
* :mod:`pixelflowsom.pl`, pictures of the results (imported on first use: it needs matplotlib);
* :mod:`pixelflowsom.harpy`, a drop-in for ``harpy.im.flowsom``.
"""

from importlib.metadata import PackageNotFoundError, version

from ._estimator import PixelFlowSOM
from ._metacluster import ConsensusClustering
from ._preprocessing import PixelPreprocessor

try:
    __version__ = version("pixelflowsom")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["ConsensusClustering", "PixelFlowSOM", "PixelPreprocessor", "__version__", "pl"]


def __getattr__(name):
    if name == "pl":  # matplotlib is imported only by those who draw
        import importlib

        return importlib.import_module("pixelflowsom.pl")
    raise AttributeError(f"module 'pixelflowsom' has no attribute {name!r}")
