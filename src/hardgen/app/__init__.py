"""Layer 12, the entry points: the hardgen CLI and the rehearsal of a config."""
