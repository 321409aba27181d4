"""Layer 10, the demo's tooling: pre-training the tiny Stable Diffusion, its decoder and its mask adapter shipped in
resources/."""
