"""Layer 2, model definitions: the segmenter architectures, the Control-LoRA, the base Stable Diffusion, the pieces
of a sampling call."""
