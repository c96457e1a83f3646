"""``pixelflowsom.harpy.im``: image functions with harpy's signatures (``harpy.im``)."""

from pixelflowsom.harpy._flowsom import flowsom

__all__ = ["flowsom"]
