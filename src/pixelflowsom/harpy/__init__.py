"""Drop-in replacement for harpy's ``im.flowsom``: ``import pixelflowsom.harpy as hp; hp.im.flowsom(sdata, ...)``."""

from pixelflowsom.harpy import im

__all__ = ["im"]
