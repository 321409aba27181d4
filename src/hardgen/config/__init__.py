"""Layer 3, configuration: the schema's validation and the typed settings built from it."""
