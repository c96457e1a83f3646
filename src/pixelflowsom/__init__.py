"""pixelflowsom: fast, out-of-core FlowSOM pixel clustering of multiplexed tissue images.

The public surface:

* :class:`PixelFlowSOM`, the scikit-learn estimator;
* :class:`ConsensusClustering`, R FlowSOM's consensus metaclustering as an estimator;
* :func:`choose_n_clusters` and :class:`NClustersChoice`, the number of metaclusters chosen from the SOM codes;
* :class:`PixelPreprocessor`, ``harpy.im.pixel_clustering_preprocess`` as a lazy scikit-learn transformer;
* :func:`sample_pixels` and :class:`PixelSample`, the training sample of images, which ``fit`` also accepts;
* :func:`read_image` and :func:`import_images`, image files (TIFF, OME-TIFF, ``.npz``, ``.npy``) into a SpatialData
  store;
* :func:`metacluster_table`, the pixels and median channel intensities of every metacluster;
* :func:`update_metaclusters` and :func:`revise_mapping`, metaclusters merged, split, moved and named after fitting,
  and :func:`read_pixie_mapping` / :func:`write_pixie_mapping`, ark Pixie's mapping CSV;
* :func:`save_model` and :func:`load_model`, model files (skops' format) that load only trusted types
  (:data:`TRUSTED_TYPES`), and :class:`InconsistentVersionWarning`, warned when a model saved by another pixelflowsom
  version is loaded;
* :mod:`pixelflowsom.pl`, pictures of the results (imported on first use: it needs matplotlib);
* :func:`report`, the self-contained HTML report of a run, from what its store holds (imported on first use);
* :mod:`pixelflowsom.harpy`, a drop-in for ``harpy.im.flowsom``.
"""

from ._estimator import PixelFlowSOM
from ._importing import import_images, read_image
from ._metacluster import ConsensusClustering, NClustersChoice, choose_n_clusters
from ._persistence import (
    TRUSTED_TYPES,
    InconsistentVersionWarning,
    load_model,
    package_version,
    save_model,
    untrusted_types,
)
from ._preprocessing import PixelPreprocessor
from ._revising import read_pixie_mapping, revise_mapping, update_metaclusters, write_pixie_mapping
from ._sampling import PixelSample, sample_pixels
from ._tables import metacluster_table

__version__ = package_version()

__all__ = [
    "ConsensusClustering",
    "InconsistentVersionWarning",
    "NClustersChoice",
    "PixelFlowSOM",
    "PixelPreprocessor",
    "PixelSample",
    "TRUSTED_TYPES",
    "__version__",
    "choose_n_clusters",
    "import_images",
    "load_model",
    "metacluster_table",
    "pl",
    "read_image",
    "read_pixie_mapping",
    "report",
    "revise_mapping",
    "sample_pixels",
    "save_model",
    "untrusted_types",
    "update_metaclusters",
    "write_pixie_mapping",
]


def __getattr__(name):
    if name == "pl":  # matplotlib is imported only by those who draw
        import importlib

        return importlib.import_module("pixelflowsom.pl")
    if name == "report":  # matplotlib and jinja2 too
        from ._report import report

        return report
    raise AttributeError(f"module 'pixelflowsom' has no attribute {name!r}")
