"""Where a call spends its time: every phase is timed and logged to the ``"pixelflowsom"`` logger.

The estimator, the drop-in and the command line time their phases (sampling, training the SOM, metaclustering,
building the ``flowsom.FlowSOM`` object, labelling and writing) with :func:`phase`, which logs one ``INFO`` record
per phase: a message such as ``"train the SOM: 16.81 s"``, and the attributes ``phase`` (the name) and ``seconds``,
which a handler can collect (``benchmarks/bench_paper.py`` does). Nothing is printed unless the application
configures logging, e.g. ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

#: The logger of the package.
logger = logging.getLogger("pixelflowsom")


@contextmanager
def phase(name: str):
    """Time the block and log it as the phase ``name`` (at ``INFO``, when it ends without an error).

    Parameters
    ----------
    name
        What the block does, e.g. ``"sample the training pixels"``.
    """
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    logger.info("%s: %.2f s", name, seconds, extra={"phase": name, "seconds": seconds})
