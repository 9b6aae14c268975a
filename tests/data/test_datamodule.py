"""DataModules: the generic COCO and DeepLabCut ones, protocol-restricted ground truth, missing-data errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clamp_pl.data.datamodule import (
    AP10KDataModule,
    COCODataModule,
    DLCDataModule,
    ToyAP10KDataModule,
    restrict_gt,
)
from clamp_pl.data.sources import missing_dataset_error

REPO = Path(__file__).resolve().parents[2]
COMMON = dict(batch_size=2, num_workers=0)
# the tiny model: 128 px input, 32 x 32 heatmaps, stride 32 (4 x 4 feature grid)
TINY_NET = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3)


def with_model(dm):
    """Give a datamodule the tiny model's preprocessing (what training does from the model spec)."""
    from clamp_pl.spec import make_spec

    dm.use_spec(make_spec(TINY_NET, dm.ensure_meta(), normalization="imagenet", padding=1.25, sigma=2.0,
                          decode="default", shift_heatmap=True, flip_test=True))
    return dm


def test_coco_datamodule_on_real_ap10k_sample(test_data):
    ann = test_data / "ap10k" / "test_ap10k.json"
    dm = COCODataModule(train_ann=str(ann), val_ann=str(ann), test_ann=str(ann), img_dir=str(test_data / "ap10k"),
                        **COMMON)
    with_model(dm).setup("fit")
    assert dm.meta.prompts[7] == "left front paw"  # derived from the file's keypoint names
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 128, 128) and batch["heatmaps"].shape == (2, 17, 32, 32)
    assert batch["peak_index"].dtype == torch.int64 and int(batch["peak_index"].max()) < 16


def test_dlc_datamodule_on_embedded_project(tmp_path):
    project = REPO / "clamp_pl" / "resources" / "dlc_openfield"
    dm = DLCDataModule(project=str(project), root=str(tmp_path / "dlc"), test_fraction=0.1, val_fraction=0.1,
                       **COMMON)
    with_model(dm).setup("fit")
    counts = {s: len(dm.instances[s]) for s in ("train", "val", "test")}
    assert counts == {"train": 92, "val": 12, "test": 12}
    assert list(dm.meta.prompts) == ["snout", "left ear", "right ear", "tail base"]
    # the test block is the END of the video: its frames come after every training frame
    assert min(i.image_id for i in dm.instances["test"]) > max(i.image_id for i in dm.instances["train"])


def test_zeroshot_restricts_eval_ground_truth(tmp_path):
    dm = ToyAP10KDataModule(root=str(tmp_path / "toy"), n_train=60, n_val=20, n_test=20,
                            protocol={"name": "zeroshot", "held_out_families": ["Equidae"]}, **COMMON)
    with_model(dm).setup("fit")
    assert {i.family for i in dm.instances["train"]}.isdisjoint({"Equidae"})
    assert {i.family for i in dm.instances["test"]} == {"Equidae"}
    gt_anns = {a["id"] for a in dm.gt["test"]["annotations"]}
    assert gt_anns == {i.ann_id for i in dm.instances["test"]}


def test_restrict_gt_keeps_only_listed_instances(test_data):
    import json

    gt = json.loads((test_data / "ap10k" / "test_ap10k.json").read_text())

    class I:  # noqa: E742 - a stand-in Instance
        ann_id = gt["annotations"][0]["id"]

    out = restrict_gt(gt, [I()])
    assert len(out["annotations"]) == 1 and len(out["images"]) == 1 and out["categories"] == gt["categories"]


def test_missing_ap10k_names_path_and_fix(tmp_path):
    dm = AP10KDataModule(root=str(tmp_path / "ap10k"), **COMMON)
    with pytest.raises(FileNotFoundError) as err:
        dm.ensure_meta()
    msg = str(err.value)
    assert "ap10k-train-split1.json" in msg and "AP-10K" in msg
    assert isinstance(missing_dataset_error(tmp_path, "ap10k"), FileNotFoundError)


def test_dlc_project_without_labels_names_the_folder(tmp_path):
    dm = DLCDataModule(project=str(tmp_path), root=str(tmp_path / "out"), **COMMON)
    with pytest.raises(FileNotFoundError, match="CollectedData_"):
        dm.ensure_meta()
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        DLCDataModule(project=str(tmp_path / "nowhere"), **COMMON).ensure_meta()


def test_own_data_overrides_and_table(test_data, tmp_path):
    """data.prompts / data.flip_pairs / data.sigmas win over what the names say; the table lands in the run dir."""
    ann = test_data / "wild" / "zebra.json"
    dm = COCODataModule(train_ann=str(ann), val_ann=str(ann), test_ann=str(ann),
                        img_dir=str(test_data / "wild" / "images"), prompts={"snout": "muzzle"},
                        flip_pairs=[["forelegL1", "forelegR1"]], sigmas=[0.05] * 9, report_dir=str(tmp_path),
                        **COMMON)
    meta = with_model(dm).meta
    assert meta.prompts[0] == "muzzle" and meta.flip_pairs == ((3, 4),) and meta.sigmas.tolist() == [0.05] * 9
    assert "| 0 | snout | muzzle | - |" in (tmp_path / "keypoints.md").read_text()


def test_dlc_converts_once_per_change_of_the_labels(tmp_path):
    import os

    from helpers.projects import make_dlc_project

    make_dlc_project(tmp_path / "proj", {"a": 6, "b": 6})
    dm = DLCDataModule(project=str(tmp_path / "proj"), converted_dir=str(tmp_path / "conv"), **COMMON)
    dm.prepare_data()
    train = dm.root / "annotations" / "train.json"
    first = train.stat().st_mtime_ns
    dm.prepare_data()  # Lightning calls it again before test
    assert train.stat().st_mtime_ns == first
    csv_file = tmp_path / "proj" / "labeled-data" / "a" / "CollectedData_me.csv"
    os.utime(csv_file, ns=(first + 10**9, first + 10**9))
    dm.prepare_data()
    assert train.stat().st_mtime_ns != first
    no_val = DLCDataModule(project=str(tmp_path / "proj"), converted_dir=str(tmp_path / "conv"), val_fraction=0,
                           **COMMON)
    with pytest.raises(ValueError, match=r"left no \['val'\] frames"):
        no_val.files()
    assert not (no_val.root / "annotations" / "val.json").exists()  # the earlier val file is not reused
