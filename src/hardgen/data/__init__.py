"""Layer 4, data: datasets of any layout as a validated manifest, the demo's procedural data, conditions, training pairs."""
