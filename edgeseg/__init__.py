"""edgeseg: SegNet-DSC pet segmentation from a PyTorch checkpoint to an edge device."""

__version__ = "0.1.0"

CLASS_NAMES = ("pet", "background", "border")

__all__ = ["CLASS_NAMES", "__version__"]
