"""Layer families: one module per family, paired by name with its kernel file in cuda/."""
