"""``TopDownDataset``: instance records -> tensors for the CLAMP model (transform + heatmap and peak targets)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clamp_pl.codecs.msra import MSRAHeatmap, peak_cells
from clamp_pl.data.transforms import TopDownTransform
from clamp_pl.formats.coco import Instance

__all__ = ["TopDownDataset"]


class TopDownDataset(Dataset):
    """One item per instance.

    Randomness: item ``i`` draws from ``np.random.default_rng([seed, stream, i])`` where ``stream`` is a fresh
    draw from the torch generator of the process that loads it: in a DataLoader worker that generator is seeded
    from the loader's base seed (drawn from the main process's torch generator) and the worker id, and Lightning's
    ``seed_everything(seed, workers=True)`` reseeds it deterministically. So augmentation changes every epoch
    (also with ``persistent_workers``, where the worker seed itself never changes) and a run is reproducible for a
    given seed, ``num_workers`` and batch size. Evaluation transforms draw nothing, so validation never shifts the
    training stream.

    Args:
        instances: the records (:func:`clamp_pl.formats.coco.load_coco_instances`).
        transform: the top-down transform (train or eval).
        codec: heatmap codec; its ``input_size`` must equal the transform's.
        feature_grid: (gw, gh) of the image tower's dense grid, for the feature-loss peak cells.
        seed: extra entropy (e.g. the experiment seed).

    Items (all tensors): ``image`` float32 (3, H, W); ``heatmaps`` float32 (K, h, w); ``keypoint_weights``
    float32 (K,); ``peak_index`` int64 (K,) into the flattened gh*gw grid; ``peak_weights`` float32 (K,);
    ``keypoints`` float32 (K, 2) in input pixels; ``visible`` float32 (K,); ``ann_id``, ``image_id``,
    ``category_id`` int64 scalars; ``center``/``scale`` float32 (2,) of the crop in image pixels; ``bbox``
    float32 (4,) xywh in image pixels; ``area`` float32 scalar; ``rotation`` float32 scalar; ``flipped`` bool scalar.
    """

    def __init__(
        self,
        instances: Sequence[Instance],
        transform: TopDownTransform,
        codec: MSRAHeatmap,
        feature_grid: tuple[int, int],
        seed: int = 0,
    ) -> None:
        if tuple(codec.input_size) != tuple(transform.input_size):
            raise ValueError(f"codec input_size {codec.input_size} != transform input_size {transform.input_size}")
        self.instances = list(instances)
        self.transform = transform
        self.codec = codec
        self.feature_grid = (int(feature_grid[0]), int(feature_grid[1]))
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.instances)

    def _rng(self, index: int) -> np.random.Generator | None:
        if not self.transform.train:
            return None
        stream = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        return np.random.default_rng([self.seed, stream, index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inst = self.instances[index]
        out = self.transform(inst, self._rng(index))
        kpts, vis = out["keypoints"][None], out["visible"][None]
        target = self.codec.encode(kpts, vis)
        peak_index, peak_weights = peak_cells(kpts, vis, self.transform.input_size, self.feature_grid)
        return {
            "image": torch.from_numpy(out["image"]),
            "heatmaps": torch.from_numpy(target["heatmaps"][0]),
            "keypoint_weights": torch.from_numpy(target["keypoint_weights"][0]),
            "peak_index": torch.from_numpy(peak_index[0]),
            "peak_weights": torch.from_numpy(peak_weights[0]),
            "keypoints": torch.from_numpy(out["keypoints"]),
            "visible": torch.from_numpy(out["visible"]),
            "ann_id": torch.tensor(inst.ann_id, dtype=torch.int64),
            "image_id": torch.tensor(inst.image_id, dtype=torch.int64),
            "category_id": torch.tensor(inst.category_id, dtype=torch.int64),
            "center": torch.from_numpy(out["center"]),
            "scale": torch.from_numpy(out["scale"]),
            "bbox": torch.from_numpy(np.asarray(inst.bbox, dtype=np.float32)),
            "area": torch.tensor(inst.area, dtype=torch.float32),
            "rotation": torch.tensor(out["rotation"], dtype=torch.float32),
            "flipped": torch.tensor(out["flipped"]),
        }
