"""Parity suite: jaxseq against torch packed sequences (outputs, states and gradients)."""
