"""Runnable examples of jaxseq (JAX) and their torch twins; see docs/porting.md."""
