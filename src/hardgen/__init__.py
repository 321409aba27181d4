"""hardgen: hard synthetic training images for medical image segmentation."""

__version__ = "0.1.0"
