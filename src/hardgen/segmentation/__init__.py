"""Layer 6, the segmenters: recipes, losses, training and inference."""
