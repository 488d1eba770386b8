"""Training-step benchmarks of jaxseq against torch packed sequences and Flax (``python -m benchmarks.run``)."""
