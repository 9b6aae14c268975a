"""Training data: keypoint meta, protocol splits, augmentation, datasets and Lightning datamodules.

Nothing is imported here, so that the keypoint meta (``clamp_pl.data.metainfo``) can be read by every layer
without pulling in torch datasets or Lightning.
"""
