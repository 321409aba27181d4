"""Layer 7, the judges of a sample: backbone features, hardness scores, the fidelity guard, filtering, mask following. Below the generator: scoring never depends on how samples were made."""
