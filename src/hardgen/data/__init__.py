"""Layer 4, data: datasets of any layout as a validated manifest (mask rule, volumes), the procedural demos,
conditions, training pairs."""
