"""Keypoint codecs: targets for training and decoding of predictions (numpy, no torch)."""

from clamp_pl.codecs.msra import MSRAHeatmap, peak_cells

__all__ = ["MSRAHeatmap", "peak_cells"]
