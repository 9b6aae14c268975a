"""CLAMP: prompt-based contrastive learning for animal pose, on Lightning + Hydra.

Importing the package changes no global state (warning filters, loggers, registries): the entry points quieten
third-party noise only while their task runs (:func:`clamp_pl.cli.run.task_wrapper`).
"""

__version__ = "0.1.0"
