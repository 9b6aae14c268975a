"""LightningDataModules: one per dataset (AP-10K, Animal-Pose, toy, mouse) on a shared base, plus the
bring-your-own-data ones (COCO files, DeepLabCut / lightning-pose / SLEAP projects).

The data flows one way: COCO files -> ``Instance`` records (validated once, in ``setup``) -> protocol split ->
``TopDownDataset`` (top-down transforms + codec targets). The evaluation ground truth of the val/test splits
(``val_gt`` / ``test_gt``) is the COCO dict restricted to the instances that survive the protocol, so a
zero-shot test set scores only the held-out species.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from clamp_pl.codecs import MSRAHeatmap
from clamp_pl.data.dataset import TopDownDataset
from clamp_pl.data.metainfo import DatasetMeta, format_meta_table, get_meta, meta_from_coco, meta_table
from clamp_pl.data.protocols import apply_protocol
from clamp_pl.data.sources import missing_dataset_error
from clamp_pl.data.transforms import TopDownAugment, TopDownTransform
from clamp_pl.data.vocabulary import keypoint_indices
from clamp_pl.formats.coco import Instance, LoadReport, load_coco_instances
from clamp_pl.spec import ModelSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvalSet:
    """One set of val/test instances scored on its own: its COCO ground truth ``gt`` (keypoints in ``meta``'s
    order), the ``meta`` whose sigmas, species and flip pairs score it, and the model output ``channels`` that
    predict ``meta``'s keypoints, in that order (None: all of them, in the model's order). ``name`` suffixes the
    metrics (``val/AP/<name>``); None for a datamodule's only set."""

    name: str | None
    gt: dict
    meta: DatasetMeta
    channels: tuple[int, ...] | None = None
    index: int = 0  # the value of the samples' ``dataset`` field that routes them here (0 without the field)


def restrict_keypoints(gt: dict, meta: DatasetMeta, keep: Sequence[int]) -> tuple[dict, DatasetMeta]:
    """The COCO dict and meta holding only the keypoints ``keep`` (indices, in the order given): flat keypoint
    lists, ``num_keypoints``, category keypoint names and the skeleton are cut to them; flip partners outside
    ``keep`` become self-partners; ``provenance`` records the cut."""
    keep = [int(k) for k in keep]
    pos = {k: i for i, k in enumerate(keep)}
    out = {**gt, "annotations": [], "categories": []}
    for ann in gt["annotations"]:
        kp = [ann["keypoints"][3 * k:3 * k + 3] for k in keep]
        out["annotations"].append({**ann, "keypoints": [v for row in kp for v in row],
                                   "num_keypoints": sum(1 for row in kp if row[2] > 0)})
    for cat in gt.get("categories", []):
        cat = dict(cat)
        if "keypoints" in cat:
            cat["keypoints"] = [cat["keypoints"][k] for k in keep]
        cat["skeleton"] = [[pos[a - 1] + 1, pos[b - 1] + 1] for a, b in cat.get("skeleton", [])
                           if a - 1 in pos and b - 1 in pos]
        out["categories"].append(cat)
    cut = dataclasses.replace(
        meta,
        keypoint_names=tuple(meta.keypoint_names[k] for k in keep),
        prompts=tuple(meta.prompts[k] for k in keep),
        flip_indices=tuple(pos.get(meta.flip_indices[k], i) for i, k in enumerate(keep)),
        sigmas=meta.sigmas[keep],
        skeleton=tuple((pos[a], pos[b]) for a, b in meta.skeleton if a in pos and b in pos),
        upper_body_ids=tuple(pos[k] for k in meta.upper_body_ids if k in pos),
        lower_body_ids=tuple(pos[k] for k in meta.lower_body_ids if k in pos),
        joint_weights=meta.joint_weights[keep],
        provenance={**meta.provenance, "keypoints": f"{len(keep)} of the {meta.num_keypoints} of {meta.name}"},
    )
    return out, cut


def restrict_gt(gt: dict, instances: Sequence[Instance]) -> dict:
    """The COCO dict holding only the images and annotations of ``instances`` (all categories kept)."""
    ann_ids = {inst.ann_id for inst in instances}
    anns = [a for a in gt["annotations"] if a["id"] in ann_ids]
    img_ids = {a["image_id"] for a in anns}
    out = {k: v for k, v in gt.items() if k not in ("images", "annotations")}
    out["images"] = [im for im in gt["images"] if im["id"] in img_ids]
    out["annotations"] = anns
    return out


class PoseDataModule(pl.LightningDataModule):
    """Shared base: resolves the three annotation files, loads and validates them, applies the protocol and
    builds the top-down datasets.

    Subclasses set ``name`` and implement :meth:`files` (and :meth:`prepare_data` when the data is generated).

    The model's side of the samples (input size, normalisation, box padding, the heatmap codec and the feature
    grid) comes from the model spec through :meth:`use_spec`, which must be called before :meth:`setup`: the
    data never restates it.

    Args:
        batch_size: per-device batch size (global = batch_size x devices x nodes).
        protocol: ``{"name": "supervised" | "fewshot" | "zeroshot", ...}`` (``conf/protocol``).
        augment: the ``data.augment`` node: every field of :class:`~clamp_pl.data.transforms.TopDownAugment`
            but ``meta`` and ``seed``; None = the training split is not augmented.
        reduced_decode: reduced-resolution JPEG decoding in every split (:class:`TopDownTransform`).
        drop_last: drop the last, partial training batch of each epoch (a tiny batch gives the BatchNorm heads
            poor statistics); CLAMP's mmpose loader keeps it (False). Ignored when the split fits one batch.
        on_error: ``"raise"`` stops at setup on the first bad record; ``"skip"`` counts and logs skipped
            records and writes them to ``report_dir/skipped_records.json``.
        keypoints: train and score only these of the data's keypoints (names, matched as
            :func:`~clamp_pl.data.vocabulary.keypoint_indices` matches them, in the order given); the others are
            never labelled for the model. None = all.
    """

    name = "coco"
    meta_name: str | None = None

    def __init__(
        self,
        *,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        augment: dict | None = None,
        reduced_decode: bool = False,
        on_error: str = "raise",
        protocol: dict | None = None,
        seed: int = 0,
        sigmas: Sequence[float] | None = None,
        prompts: Sequence[str] | None = None,
        report_dir: str | None = None,
        keypoints: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = bool(drop_last)
        self.augment = None if augment is None else dict(augment)
        self.reduced_decode = bool(reduced_decode)
        self.on_error = on_error
        self.protocol = dict(protocol or {"name": "supervised"})
        self.seed = seed
        self.sigmas = list(sigmas) if sigmas is not None else None
        self.prompts = list(prompts) if prompts is not None else None
        self.report_dir = report_dir
        self.keypoints = None if keypoints is None else [str(n) for n in keypoints]
        # the layout of the files and the indices of its keypoints kept (data.keypoints)
        self._file_meta: DatasetMeta | None = None
        self._keep: list[int] | None = None
        self.meta: DatasetMeta | None = None
        self.instances: dict[str, list[Instance]] = {}
        self.gt: dict[str, dict] = {}
        self.reports: dict[str, LoadReport] = {}
        self.datasets: dict[str, TopDownDataset] = {}
        self.spec: ModelSpec | None = None
        self.codec: MSRAHeatmap | None = None
        # (model channels, data keypoints) scored instead of all keypoints: set by score_channels
        self._scored: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    # ---------------------------------------------------------------- files and meta
    def files(self) -> dict[str, tuple[Path, Path]]:
        """``{split: (annotation json, image dir)}`` for train/val/test."""
        raise NotImplementedError

    def build_meta(self, train_ann: Path) -> DatasetMeta:
        if self.meta_name is not None:
            meta = get_meta(self.meta_name)
        else:
            meta = meta_from_coco(train_ann, name=self.name, sigmas=self.sigmas, prompts=self.prompts)
        return meta

    def ensure_meta(self) -> DatasetMeta:
        """The dataset meta, available before ``setup`` (the model needs the prompts to be built)."""
        if self.meta is None:
            self.prepare_data()
            files = self.files()
            self._file_meta = self.build_meta(files["train"][0])
            self.meta = self._file_meta
            if self.keypoints is not None:
                self._keep = keypoint_indices(self._file_meta, self.keypoints, "data.keypoints")
                self.meta = restrict_keypoints({"annotations": []}, self._file_meta, self._keep)[1]
        return self.meta

    def use_spec(self, spec: ModelSpec, codec: MSRAHeatmap | None = None, *, check_keypoints: bool = True) -> None:
        """Take the model's input size, normalisation, box padding, feature grid and heatmap codec from its spec.

        Args:
            spec: the model spec; its keypoints must be this dataset's (same names, same order).
            codec: the codec object to make the targets with (the model's own, so that one object encodes and
                decodes; datasets made by an earlier ``setup`` switch to it); None builds it from the spec.
            check_keypoints: off, the spec may have other keypoints (evaluation by name, :meth:`score_channels`;
                a dataset inside a multi-dataset one, whose model predicts the union vocabulary).

        Raises:
            ValueError: the spec's keypoints are not this dataset's (the message names both).
        """
        meta = self.ensure_meta()
        theirs = tuple(spec.meta["keypoint_names"])
        if check_keypoints and theirs != tuple(meta.keypoint_names):
            raise ValueError(
                f"the model predicts {len(theirs)} keypoints {list(theirs)} but the {self.name} data has "
                f"{meta.num_keypoints}: {list(meta.keypoint_names)}"
            )
        codec = spec.build_codec() if codec is None else codec
        if tuple(codec.input_size) != spec.input_size or tuple(codec.heatmap_size) != spec.heatmap_size:
            raise ValueError(f"codec {codec.input_size} -> {codec.heatmap_size} is not the spec's "
                             f"{spec.input_size} -> {spec.heatmap_size}")
        self.spec, self.codec = spec, codec
        for dataset in self.datasets.values():  # made by an earlier setup: targets from this codec object now
            dataset.codec = codec

    def _spec(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError(f"{type(self).__name__}: call use_spec(model_spec) before setup(): the input size, "
                               "normalisation and heatmap codec come from the model")
        return self.spec

    def score_channels(self, channels: Sequence[int], keypoints: Sequence[int]) -> None:
        """Score the model output ``channels[i]`` as this data's keypoint ``keypoints[i]`` and nothing else (a model
        of another vocabulary, matched by name): the metrics use only those keypoints, with this data's sigmas."""
        if len(channels) != len(keypoints) or not keypoints:
            raise ValueError(f"score_channels needs as many channels as keypoints (>= 1), got {len(channels)} and "
                             f"{len(keypoints)}")
        self._scored = (tuple(int(c) for c in channels), tuple(int(k) for k in keypoints))

    def eval_sets(self, split: str) -> list[EvalSet]:
        """The sets the ``split`` ("val" | "test") is scored as: here one, all keypoints or those of
        :meth:`score_channels`."""
        meta = self.ensure_meta()
        if self._scored is None:
            return [EvalSet(None, self.gt[split], meta)]
        channels, keypoints = self._scored
        gt, cut = restrict_keypoints(self.gt[split], meta, keypoints)
        return [EvalSet(None, gt, cut, channels)]

    @property
    def input_size(self) -> tuple[int, int]:
        """Network input (W, H), from the spec."""
        return self._spec().input_size

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(gw, gh) of the image tower's dense features (feature-loss targets), from the spec."""
        return self._spec().feature_grid

    @property
    def normalization(self) -> str:
        """Name of the mean/std pair of the crops, from the spec."""
        return self._spec().normalization

    @property
    def split_file(self) -> Path | None:
        p = self.protocol
        if p.get("name") != "fewshot" or not p.get("split_dir"):
            return None
        return Path(p["split_dir"]) / self.name / f"fewshot_k{p['shots']}_seed{p['seed']}.json"

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.instances:
            return
        spec = self._spec()
        files = self.files()
        meta = self.ensure_meta()
        for split in SPLITS:
            ann, img_dir = files[split]
            insts, gt, report = load_coco_instances(
                ann, img_dir, self._file_meta, train=(split == "train"), on_error=self.on_error
            )
            if self._keep is not None:
                insts = [dataclasses.replace(i, keypoints=i.keypoints[self._keep]) for i in insts]
                insts = [i for i in insts if (i.keypoints[:, 2] > 0).any()]
                gt = restrict_keypoints(gt, self._file_meta, self._keep)[0]
            self.instances[split], self.gt[split], self.reports[split] = insts, gt, report
        self._apply_protocol()
        self._write_reports()
        augment = None if self.augment is None else TopDownAugment.from_config(meta, self.augment, self.seed)
        for split in SPLITS:
            transform = TopDownTransform(
                meta,
                input_size=spec.input_size,
                augment=augment if split == "train" else None,
                normalization=(spec.mean, spec.std),
                padding=spec.padding,
                reduced_decode=self.reduced_decode,
            )
            self.datasets[split] = TopDownDataset(
                self.instances[split], transform, self.codec, feature_grid=spec.feature_grid, seed=self.seed
            )
        counts = {s: len(self.instances[s]) for s in SPLITS}
        log.info("%s (%s protocol): %s instances", self.name, self.protocol.get("name"), counts)

    def _apply_protocol(self) -> None:
        kw = {k: v for k, v in self.protocol.items() if k not in ("name", "split_dir")}
        if self.protocol.get("name") == "fewshot":
            kw["split_file"] = self.split_file
        train, val, test = apply_protocol(
            self.protocol.get("name", "supervised"),
            self.instances["train"],
            self.instances["val"],
            self.instances["test"],
            **kw,
        )
        self.instances.update(train=train, val=val, test=test)
        for split in ("val", "test"):
            self.gt[split] = restrict_gt(self.gt[split], self.instances[split])
        for split in SPLITS:
            if not self.instances[split]:
                raise ValueError(
                    f"{self.name}: the {self.protocol.get('name')} protocol left no {split} instances "
                    f"(protocol settings: {self.protocol})"
                )

    def _write_reports(self) -> None:
        if not self.report_dir:
            return
        out = Path(self.report_dir)
        out.mkdir(parents=True, exist_ok=True)
        split_info = {
            "dataset": self.name,
            "protocol": self.protocol,
            "counts": {s: len(self.instances[s]) for s in SPLITS},
            "species": {
                s: sorted({i.species for i in self.instances[s]}) for s in SPLITS
            },
            "train_ann_ids": sorted(i.ann_id for i in self.instances["train"]),
        }
        (out / "split.json").write_text(json.dumps(split_info, indent=1))
        skipped = {s: r.skipped for s, r in self.reports.items() if r.skipped}
        if skipped:
            (out / "skipped_records.json").write_text(json.dumps(skipped, indent=1, default=str))
            log.warning("skipped records: %s (see %s)", {s: len(v) for s, v in skipped.items()}, out)

    @property
    def skipped_counts(self) -> dict[str, int]:
        return {s: len(r.skipped) for s, r in self.reports.items()}

    # ---------------------------------------------------------------- loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            drop_last=self.drop_last and shuffle and len(self.datasets[split]) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _require(paths: dict[str, tuple[Path, Path]], dataset: str) -> dict[str, tuple[Path, Path]]:
    for ann, img_dir in paths.values():
        if not ann.is_file():
            raise missing_dataset_error(ann, dataset)
        if not img_dir.is_dir():
            raise missing_dataset_error(img_dir, dataset)
    return paths


class AP10KDataModule(PoseDataModule):
    """AP-10K in its published layout: ``root/annotations/ap10k-{train,val,test}-split{N}.json`` and images in
    ``root/data/``. ``test_split="val"`` reproduces CLAMP's official configs (which test on val-split1)."""

    name = "ap10k"
    meta_name = "ap10k"

    def __init__(self, *, root: str, split: int = 1, test_split: str = "test", **kw: Any) -> None:
        super().__init__(**kw)
        self.root, self.split, self.test_split = Path(root), split, test_split

    def files(self) -> dict[str, tuple[Path, Path]]:
        ann = self.root / "annotations"
        img = self.root / "data"
        names = {"train": "train", "val": "val", "test": self.test_split}
        return _require(
            {s: (ann / f"ap10k-{n}-split{self.split}.json", img) for s, n in names.items()}, "ap10k"
        )


class AnimalPoseDataModule(PoseDataModule):
    """Animal-Pose as written by ``scripts/prepare_animalpose.py``."""

    name = "animalpose"
    meta_name = "animalpose"

    def __init__(self, *, root: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.root = Path(root)

    def files(self) -> dict[str, tuple[Path, Path]]:
        ann = self.root / "annotations"
        return _require(
            {s: (ann / f"animalpose_{s}.json", self.root / "images") for s in SPLITS}, "animalpose"
        )


class ToyAP10KDataModule(PoseDataModule):
    """The procedural toy set in AP-10K format, generated on first use into ``root`` (deterministic)."""

    name = "toy_ap10k"
    meta_name = "ap10k"

    def __init__(self, *, root: str, n_train: int = 1200, n_val: int = 150, n_test: int = 150, **kw: Any):
        super().__init__(**kw)
        self.root = Path(root)
        self.sizes = dict(n_train=n_train, n_val=n_val, n_test=n_test)
        self._paths: dict[str, Path] | None = None

    def prepare_data(self) -> None:
        from clamp_pl.data.toy import ensure_toy_ap10k

        self._paths = ensure_toy_ap10k(self.root, **self.sizes)

    def files(self) -> dict[str, tuple[Path, Path]]:
        if self._paths is None:
            self.prepare_data()
        return {s: (self._paths[s], self._paths["images"]) for s in SPLITS}


class ToyAnimalPoseDataModule(ToyAP10KDataModule):
    """The procedural toy set with Animal-Pose's 20 keypoints (throat, withers, elbows and knees named as
    Animal-Pose names them), generated on first use into ``root``; its own ``generator_seed`` (default 1) draws
    other animals than the AP-10K toy set. The species are the toy's (AP-10K ids and families)."""

    name = "toy_animalpose"

    def __init__(self, *, generator_seed: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.generator_seed = generator_seed

    def build_meta(self, train_ann: Path) -> DatasetMeta:
        toy = get_meta("ap10k")
        return dataclasses.replace(get_meta("animalpose"), name=self.name, species=dict(toy.species),
                                   species_to_family=dict(toy.species_to_family))

    def prepare_data(self) -> None:
        from clamp_pl.data.toy import ensure_toy_animalpose

        self._paths = ensure_toy_animalpose(self.root, seed=self.generator_seed, **self.sizes)


class MouseOpenfieldDataModule(PoseDataModule):
    """The 116 real DeepLabCut mouse frames embedded in the package (contiguous test block)."""

    name = "mouse_openfield"

    def __init__(self, *, root: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.root = Path(root)
        self._paths: dict[str, Path] | None = None

    def prepare_data(self) -> None:
        from clamp_pl.formats.dlc import ensure_mouse_openfield

        self._paths = ensure_mouse_openfield(self.root)

    def files(self) -> dict[str, tuple[Path, Path]]:
        if self._paths is None:
            self.prepare_data()
        return {s: (self._paths[s], self._paths["images"]) for s in SPLITS}


class OwnDataModule(PoseDataModule):
    """Base of the bring-your-own-data modules (COCO files, DeepLabCut / lightning-pose / SLEAP projects).

    The keypoint meta is derived from the train file (:func:`~clamp_pl.data.metainfo.meta_from_coco`: prompts
    from the names, flip pairs from left/right, sigmas of a known layout or the default) unless ``prompts``
    (K texts, or ``{name: text}``), ``flip_pairs`` (pairs of names or indices; ``[]`` = none) or ``sigmas`` say
    otherwise. The derived table is logged and, with ``report_dir``, written to ``keypoints.md`` /
    ``keypoints.json`` there, so the choice is never silent (``python -m clamp_pl.tools.inspect_data`` shows it
    before training).
    """

    def __init__(self, *, prompts: Sequence[str] | dict | None = None, flip_pairs: Sequence | None = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.prompts = prompts
        self.flip_pairs = flip_pairs

    def build_meta(self, train_ann: Path) -> DatasetMeta:
        meta = meta_from_coco(train_ann, name=self.name, sigmas=self.sigmas, prompts=self.prompts,
                              flip_pairs=self.flip_pairs)
        table = format_meta_table(meta)
        log.info("keypoints of %s (override with data.prompts / data.flip_pairs / data.sigmas):\n%s",
                 self.name, table)
        if self.report_dir:
            out = Path(self.report_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "keypoints.md").write_text(table + "\n")
            (out / "keypoints.json").write_text(json.dumps(
                {"provenance": meta.provenance, "keypoints": meta_table(meta)}, indent=1))
        return meta


class DLCDataModule(OwnDataModule):
    """A DeepLabCut project (single- or multi-animal, every video) or a lightning-pose ``CollectedData.csv``,
    converted to COCO in ``root`` (default ``converted_dir/<project name>``) and split per video
    (:func:`clamp_pl.formats.dlc.split_frames`: ``split="blocks"``, a contiguous val and test block at the end of
    every video, or ``split="videos"``, whole held-out videos chosen by ``split_seed``). With ``on_error="skip"``
    the conversion drops bad label rows and frames whose image is missing, and lists them under ``skipped`` in
    ``root/split.json``; otherwise they stop it with an error naming the file, the row and the column."""

    name = "dlc"

    def __init__(self, *, project: str, root: str | None = None, converted_dir: str = "data/dlc",
                 split: str = "blocks", test_fraction: float = 0.15, val_fraction: float = 0.1,
                 split_seed: int = 0, category_name: str = "animal", **kw: Any):
        super().__init__(**kw)
        self.project = Path(project)
        self.root = Path(root) if root else Path(converted_dir) / project_name(self.project)
        self.split, self.split_seed = split, split_seed
        self.test_fraction, self.val_fraction = test_fraction, val_fraction
        self.category_name = category_name
        self._paths: dict[str, Path] | None = None

    def convert(self) -> dict[str, Path]:
        from clamp_pl.formats.dlc import dlc_to_coco

        if not self.project.exists():
            raise FileNotFoundError(
                f"{self.project} does not exist: point data.project at a DeepLabCut project folder (config.yaml + "
                "labeled-data/<video>/CollectedData_<scorer>.csv) or a lightning-pose CollectedData.csv"
            )
        return dlc_to_coco(self.project, self.root, split=self.split, val_fraction=self.val_fraction,
                           test_fraction=self.test_fraction, seed=self.split_seed, category_name=self.category_name,
                           on_error=self.on_error)

    def _conversion_key(self) -> dict[str, Any]:
        """What the converted files depend on: the label files (path, size, mtime) and the split settings."""
        if self.project.is_dir():
            sources = sorted(self.project.glob("labeled-data/*/CollectedData_*.csv"))
            sources += sorted(self.project.glob("labeled-data/*/CollectedData_*.h5"))
            sources += [self.project / "config.yaml"] if (self.project / "config.yaml").is_file() else []
        else:
            sources = [self.project]
        return {"type": type(self).__name__, "converter": 2, "category_name": self.category_name,
                "on_error": self.on_error,
                "split": self.split, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "split_seed": self.split_seed,
                "sources": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in sources]}

    def prepare_data(self) -> None:
        # Lightning calls this before fit and again before test: convert once per change of the labels
        stamp = self.root / "conversion.json"
        key = self._conversion_key() if self.project.exists() else None
        paths = {s: self.root / "annotations" / f"{s}.json" for s in SPLITS}
        paths = {s: p for s, p in paths.items() if p.is_file()}
        paths.update(images=self.root / "images", split=self.root / "split.json")
        if key is not None and stamp.is_file() and paths["split"].is_file() and "train" in paths:
            try:
                if json.loads(stamp.read_text()) == key:
                    self._paths = paths
                    return
            except json.JSONDecodeError:
                pass
        self._paths = self.convert()  # raises when the project is missing, so key is not None past here
        stamp.write_text(json.dumps(key, indent=1))
        record = json.loads(self._paths["split"].read_text())
        log.info("%s -> %s: %s", self.project, self.root,
                 {s: {"frames": c["frames"], "instances": c["instances"]} for s, c in record["counts"].items()})
        if record.get("skipped"):
            log.warning("%s: %d records skipped by the conversion (data.on_error=skip), listed in %s",
                        self.project, len(record["skipped"]), self._paths["split"])

    def files(self) -> dict[str, tuple[Path, Path]]:
        if self._paths is None:
            self.prepare_data()
        missing = [s for s in SPLITS if s not in self._paths]
        if missing:
            raise ValueError(f"{self.project}: the {self.split!r} split left no {missing} frames (see "
                             f"{self._paths['split']}); raise data.val_fraction / data.test_fraction")
        return {s: (self._paths[s], self._paths["images"]) for s in SPLITS}


class SLEAPDataModule(DLCDataModule):
    """A SLEAP project (``.slp``, read with the optional ``sleap-io`` package: ``pip install -e ".[sleap]"``),
    converted to COCO with its skeleton and node names and split per video as :class:`DLCDataModule`."""

    name = "sleap"

    def convert(self) -> dict[str, Path]:
        from clamp_pl.formats.sleap import slp_to_coco

        return slp_to_coco(self.project, self.root, split=self.split, val_fraction=self.val_fraction,
                           test_fraction=self.test_fraction, seed=self.split_seed, category_name=self.category_name,
                           on_error=self.on_error)


def project_name(project: Path) -> str:
    """The folder name a converted project is kept under: the project folder's name, or for a label file
    (lightning-pose ``CollectedData.csv``, SLEAP ``.slp``) its folder's name plus its stem."""
    project = Path(project).resolve()
    if project.suffix:
        return f"{project.parent.name}-{project.stem}"
    return project.name


class COCODataModule(OwnDataModule):
    """Bring-your-own COCO keypoint files; the meta comes from the train file's category (see
    :class:`OwnDataModule`)."""

    name = "coco"

    def __init__(self, *, train_ann: str, val_ann: str, test_ann: str, img_dir: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.paths = {"train": Path(train_ann), "val": Path(val_ann), "test": Path(test_ann)}
        self.img_dir = Path(img_dir)

    def files(self) -> dict[str, tuple[Path, Path]]:
        return _require({s: (p, self.img_dir) for s, p in self.paths.items()}, "coco")


#: the datamodules by the registry name a run records (``spec.data["config"]["datamodule"]``): code can move
#: without breaking old runs, which name their datamodule here rather than by a module path
DATAMODULES: dict[str, type[PoseDataModule]] = {
    cls.name: cls for cls in (AP10KDataModule, AnimalPoseDataModule, ToyAP10KDataModule, ToyAnimalPoseDataModule,
                              MouseOpenfieldDataModule, DLCDataModule, SLEAPDataModule, COCODataModule)
}


def datamodule_class(key: str) -> type[PoseDataModule]:
    """The datamodule class of a registry name (``"ap10k"``) or of a Hydra ``_target_`` path: configs name their
    class by path, and runs written before the registry recorded that path (``clamp_pl.data.datamodule.
    ToyAP10KDataModule``), which is matched by its class name wherever the class lives now."""
    if key in DATAMODULES:
        return DATAMODULES[key]
    by_class = {cls.__name__: cls for cls in DATAMODULES.values()}
    cls_name = str(key).rsplit(".", 1)[-1]
    if cls_name in by_class:
        return by_class[cls_name]
    raise ValueError(f"unknown datamodule {key!r}: known names {sorted(DATAMODULES)}")


def datamodule_name(key: str) -> str:
    """The registry name of a registry name or ``_target_`` path (see :func:`datamodule_class`)."""
    return datamodule_class(key).name


# several datasets trained together: clamp_pl.data.multi builds on the classes above and adds its MultiDataModule
# to DATAMODULES (whichever of the two modules is imported first)
import clamp_pl.data.multi  # noqa: E402,F401
