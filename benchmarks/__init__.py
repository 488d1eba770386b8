"""Training-step benchmarks: jaxseq vs torch packed sequences vs Flax (``python -m benchmarks.run``).

Scripts (each ``python -m benchmarks.NAME``; none is imported by another module): ``run`` (every
table and section of ``docs/benchmarks.md``), ``compare_revisions`` and ``gpu_check`` (the device
check, its parts in :mod:`benchmarks.gpu`). Libraries, each importing only the ones listed before
it: ``configs`` (the problems) and ``timing`` (how a step is measured); ``baseline`` and
``revision``; ``contenders`` (jaxseq, torch and Flax steps) and ``floor`` (the GEMM floor);
``report`` (tables and text); the sections ``compile_time``, ``eager`` and ``xla_flags``.
"""
