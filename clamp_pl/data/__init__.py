"""Data: COCO keypoint files -> validated instances -> protocol splits -> top-down samples.

Only the numpy-level pieces are re-exported here; import ``clamp_pl.data.dataset`` (torch) and
``clamp_pl.data.datamodule`` (Lightning) explicitly.
"""

from clamp_pl.data.coco import DataError, Instance, LoadReport, load_coco_instances
from clamp_pl.data.metainfo import DatasetMeta, get_meta, meta_from_coco
from clamp_pl.data.transforms import TopDownTransform

__all__ = [
    "DataError",
    "DatasetMeta",
    "Instance",
    "LoadReport",
    "TopDownTransform",
    "get_meta",
    "load_coco_instances",
    "meta_from_coco",
]
