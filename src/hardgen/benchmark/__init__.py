"""Layer 8, the segmentation benchmark: one segmenter run per (arch, policy, ratio, seed). Below the generator."""
