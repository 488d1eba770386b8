"""PyTorch reference models and runners written the correct, packed way (the twins of jaxseq).

* :mod:`torch_ref.packed`: ``run_packed`` (pad -> pack(enforce_sorted=False) -> RNN -> pad_packed).
"""
