"""CLAMP: prompt-based contrastive learning for animal pose, on Lightning + Hydra."""
__version__ = "0.1.0"
