"""Layer 5, evaluation arithmetic: the field's metrics, paired contrasts, the reproduction check."""
