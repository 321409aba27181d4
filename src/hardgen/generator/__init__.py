"""Layer 9, the generator: Control-LoRA training (plain, hard, feedback), its objectives, sampling and mining."""
