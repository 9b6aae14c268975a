"""Entry-point helpers: config resolution, instantiation, run-dir bookkeeping (the only Hydra users besides conf/)."""
