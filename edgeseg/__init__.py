"""edgeseg: SegNet-DSC pet segmentation from a PyTorch checkpoint to an edge device."""

from edgeseg import _moved

__version__ = "0.1.0"

CLASS_NAMES = ("pet", "background", "border")

__all__ = ["CLASS_NAMES", "__version__"]

_moved.install()  # edgeseg 0.1's flat module names, deprecated
