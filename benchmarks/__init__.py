"""clamp_pl's benchmarks, outside the installed package: ``python -m benchmarks.cpu`` (``make bench``),
``python -m benchmarks.gpu`` (``make bench-gpu``) and ``python -m benchmarks.check_gpu`` (``make check-gpu``), run
from the repository root.

``harness`` (timing and memory probes), ``fixtures`` (synthetic data, model configs, the training step),
``report`` (rows, machine description, Markdown/JSON), ``cases`` (one module per CPU case).
"""
