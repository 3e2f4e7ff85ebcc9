"""Benchmarks of gpulayers against PyTorch and the memory roofline (``python -m bench``)."""
