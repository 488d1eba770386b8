"""Training-step benchmarks: jaxseq vs torch packed sequences vs Flax (``python -m benchmarks.run``)."""
