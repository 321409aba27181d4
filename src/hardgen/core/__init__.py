"""Layer 1, declarations and I/O, no science: the registry of variants and policies, every artifact's path, file I/O, weights, devices, logging."""
