"""Several datasets trained together, each with its own keypoint names (``MultiDataModule``).

Every dataset keeps its own datamodule: its files, keypoint names, sigmas, flip pairs, protocol and split,
augmentation and targets. The model predicts the union vocabulary
(:func:`clamp_pl.data.vocabulary.union_vocabulary`: a name two datasets share by normalised name or synonym is one
keypoint, named as the first dataset names it); a sample's per-keypoint targets are padded to the union with zero
weights, and its ``dataset`` field says which dataset it came from, so that the loss can look at its own keypoints
only (:class:`clamp_pl.training.module.PoseLitModule` groups a batch by it). Each dataset's val/test split is scored
on its own keypoints with its own sigmas (``val/AP/<dataset>``); their mean is ``val/AP``.

The model spec records the union vocabulary (names, prompts, flip pairs; sigmas of the dataset that brought each
name; the first dataset's species table), so ``load_model(run)`` predicts every name any of the datasets taught.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from clamp_pl.codecs import MSRAHeatmap
from clamp_pl.data.datamodule import DATAMODULES, SPLITS, EvalSet, PoseDataModule, datamodule_class
from clamp_pl.data.dataset import TopDownDataset
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.data.vocabulary import union_vocabulary
from clamp_pl.spec import SPEC_DATA_KEYS, ModelSpec

__all__ = ["MultiDataModule", "MultiDataset"]

#: per-keypoint item fields of :class:`TopDownDataset` (first dimension K) and the value of a keypoint a dataset
#: does not have
_PER_KEYPOINT = ("heatmaps", "keypoint_weights", "peak_index", "peak_weights", "keypoints", "visible")


class MultiDataset(Dataset):
    """The items of several :class:`TopDownDataset` s, one after the other, with their per-keypoint fields padded to
    the union vocabulary (zeros: weight 0, not visible) and a ``dataset`` field (int64 scalar, the index of the
    dataset in ``parts``).

    Args:
        parts: the datasets.
        channels: ``channels[d][k]`` = union index of keypoint ``k`` of dataset ``d``.
        num_keypoints: the size of the union vocabulary.
    """

    def __init__(self, parts: list[TopDownDataset], channels: list[list[int]], num_keypoints: int) -> None:
        self.parts = parts
        self.channels = [torch.as_tensor(c, dtype=torch.long) for c in channels]
        self.num_keypoints = int(num_keypoints)
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def codec(self) -> MSRAHeatmap:
        return self.parts[0].codec

    @codec.setter
    def codec(self, codec: MSRAHeatmap) -> None:
        for part in self.parts:
            part.codec = codec

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset, index in it) of item ``index``."""
        d = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return d, int(index - self.offsets[d])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d, j = self.locate(index)
        item = self.parts[d][j]
        for key in _PER_KEYPOINT:
            value = item[key]
            padded = value.new_zeros((self.num_keypoints, *value.shape[1:]))
            padded[self.channels[d]] = value
            item[key] = padded
        item["dataset"] = torch.tensor(d, dtype=torch.int64)
        return item


class MultiDataModule(PoseDataModule):
    """Datasets of ``conf/data`` trained together; see the module docstring.

    Args:
        datasets: ``{slot: data config}``: each a data config as a run records it (``datamodule`` registry name or
            ``_target_``, and its arguments; its sigma / normalization / padding are the model's, taken from the
            spec like every datamodule's). A dataset's metrics are named by its datamodule's name (``toy_ap10k``),
            or by its slot when two datasets share a name.
        ratios: ``{slot: weight}``: the share of each dataset in the training samples (drawn with replacement,
            ``epoch_size`` per epoch); None = every training instance once per epoch, shuffled (shares in proportion
            to the sizes). Slots left out weigh 0.
        epoch_size: training samples per epoch with ``ratios``; None = the training instances of all datasets.
        batch_size, num_workers, pin_memory, persistent_workers, drop_last: the loaders' (the datasets' own are
            not used).
        seed: seeds the ratio sampler.
        report_dir: each dataset writes its reports (``split.json``, ...) to ``report_dir/<slot>``.
        **for_each: any other setting replaces the same setting of every dataset whose config has it
            (``debug=tiny``'s ``data.n_train=96`` shrinks every toy set); an error when no dataset has it.
    """

    name = "multi"

    def __init__(
        self,
        *,
        datasets: Mapping[str, Mapping[str, Any]],
        ratios: Mapping[str, float] | None = None,
        epoch_size: int | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        report_dir: str | None = None,
        **for_each: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, drop_last=drop_last, seed=seed, report_dir=report_dir)
        if not datasets:
            raise ValueError("data.datasets is empty: name at least one dataset (data.datasets.<slot>=<data config>)")
        unused = sorted(set(for_each) - {k for config in datasets.values() for k in config})
        if unused:
            raise ValueError(f"data.{unused[0]} is not a setting of the multi-dataset datamodule nor of any of its "
                             f"datasets ({sorted(datasets)})")
        self.parts: dict[str, PoseDataModule] = {}
        for slot, config in datasets.items():
            config = {**config, **{k: v for k, v in for_each.items() if k in config}}
            kw = {k: v for k, v in config.items() if k not in SPEC_DATA_KEYS}
            key = kw.pop("datamodule", None) or kw.pop("_target_", None)
            if key is None:
                raise ValueError(f"data.datasets.{slot} names no datamodule (_target_ or datamodule: one of "
                                 f"{sorted(DATAMODULES)})")
            cls = datamodule_class(str(key))
            if cls is MultiDataModule:
                raise ValueError(f"data.datasets.{slot} is itself a multi-dataset config")
            self.parts[str(slot)] = cls(**kw, report_dir=str(Path(report_dir) / str(slot)) if report_dir else None)
        unknown = sorted(set(ratios or {}) - set(self.parts))
        if unknown:
            raise ValueError(f"data.ratios names {unknown}, which are not in data.datasets ({sorted(self.parts)})")
        if ratios is not None and (any(float(w) < 0 for w in ratios.values()) or not sum(map(float, ratios.values()))):
            raise ValueError(f"data.ratios must be >= 0 with a positive sum, got {dict(ratios)}")
        self.ratios = None if ratios is None else {s: float(ratios.get(s, 0.0)) for s in self.parts}
        self.epoch_size = epoch_size
        names = [p.name for p in self.parts.values()]
        #: the name of each dataset in its metrics (``val/AP/<name>``), by slot
        self.names = {s: p.name if names.count(p.name) == 1 else s for s, p in self.parts.items()}
        self.channels: dict[str, list[int]] = {}

    # ---------------------------------------------------------------- vocabulary
    def build_meta(self, train_ann: Path) -> DatasetMeta:
        raise NotImplementedError("a multi-dataset meta is the union of its datasets' (ensure_meta)")

    def ensure_meta(self) -> DatasetMeta:
        """The union vocabulary of the datasets (:func:`union_vocabulary`); ``channels[slot]`` maps each
        dataset's keypoints into it."""
        if self.meta is None:
            metas = {s: p.ensure_meta() for s, p in self.parts.items()}
            self.meta, self.channels = union_vocabulary(metas, name="+".join(self.names.values()))
        return self.meta

    def use_spec(self, spec: ModelSpec, codec: MSRAHeatmap | None = None, *, check_keypoints: bool = True) -> None:
        """The spec must predict the union vocabulary; every dataset makes its targets with the same codec."""
        super().use_spec(spec, codec, check_keypoints=check_keypoints)
        for part in self.parts.values():
            part.use_spec(spec, self.codec, check_keypoints=False)

    def score_channels(self, channels: Any, keypoints: Any) -> None:
        raise ValueError("a multi-dataset datamodule is scored per dataset on its own keypoints; evaluate on one of "
                         "its datasets (data=<dataset>) to score other keypoints")

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        meta = self.ensure_meta()
        for part in self.parts.values():
            part.setup(stage)
        k = meta.num_keypoints
        for split in SPLITS:
            padded = []
            for slot, part in self.parts.items():
                for inst in part.instances[split]:
                    kp = np.zeros((k, 3), dtype=inst.keypoints.dtype)
                    kp[self.channels[slot]] = inst.keypoints
                    padded.append(dataclasses.replace(inst, keypoints=kp))
            self.instances[split] = padded
            self.datasets[split] = MultiDataset([p.datasets[split] for p in self.parts.values()],
                                                [self.channels[s] for s in self.parts], k)

    def eval_sets(self, split: str) -> list[EvalSet]:
        """One set per dataset, scored on its own keypoints (the union channels that predict them)."""
        return [EvalSet(self.names[s], p.gt[split], p.ensure_meta(), tuple(self.channels[s]), index=i)
                for i, (s, p) in enumerate(self.parts.items())]

    @property
    def skipped_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for part in self.parts.values():
            for split, n in part.skipped_counts.items():
                counts[split] = counts.get(split, 0) + n
        return counts

    # ---------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        if self.ratios is None:
            return self._loader("train", shuffle=True)
        dataset = self.datasets["train"]
        sizes = np.diff(dataset.offsets)
        weights = np.concatenate([np.full(n, self.ratios[s] / max(n, 1)) for s, n in zip(self.parts, sizes)])
        generator = torch.Generator().manual_seed(int(self.seed))
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                        num_samples=int(self.epoch_size or len(dataset)), replacement=True,
                                        generator=generator)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          persistent_workers=self.persistent_workers,
                          drop_last=self.drop_last and len(sampler) > self.batch_size)


DATAMODULES[MultiDataModule.name] = MultiDataModule
