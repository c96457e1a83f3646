"""pixelflowsom: fast, out-of-core FlowSOM pixel clustering of multiplexed tissue images.

The public surface:

* :class:`PixelFlowSOM`, the scikit-learn estimator;
* :class:`ConsensusClustering`, R FlowSOM's consensus metaclustering as an estimator;
* :mod:`pixelflowsom.harpy`, a drop-in for ``harpy.im.flowsom``.
"""

from importlib.metadata import PackageNotFoundError, version

from ._estimator import PixelFlowSOM
from ._metacluster import ConsensusClustering

try:
    __version__ = version("pixelflowsom")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["ConsensusClustering", "PixelFlowSOM", "__version__"]
