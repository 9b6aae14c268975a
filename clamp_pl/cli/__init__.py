"""The Hydra glue shared by the entry points: composing configs, building objects from them, run wrappers."""
