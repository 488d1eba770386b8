"""The parts of the prepared device check (``python -m benchmarks.gpu_check``).

One module per check (``environment``, ``layout``, ``raw_ragged``, ``fast_path``,
``weight_drop_and_split``, ``jit_compiles``, ``precision``, ``determinism``, ``refusals``,
``torch_cudnn``: each ``check(kernel) -> Result``), the subprocess probes (``probes``), the timing
stage (``benchmark``), and what they share: the batches and the two computations under test
(``cases``), recording (``record``) and subprocess handling (``jobs``).
"""
