"""The multi-dataset datamodule: union vocabulary, per-sample keypoint masks, per-dataset protocols and eval sets,
mixing ratios; and the toy set in the Animal-Pose vocabulary it is tested on."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from clamp_pl.data.datamodule import (
    DATAMODULES,
    ToyAnimalPoseDataModule,
    datamodule_class,
    restrict_keypoints,
)
from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.multi import MultiDataModule
from clamp_pl.data.toy import ensure_toy_animalpose, ensure_toy_ap10k
from clamp_pl.spec import make_spec

TINY_NET = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3)
LOADER = dict(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)


def _toy(name: str, root, **kw) -> dict:
    return {"datamodule": name, "root": str(root), "n_train": 12, "n_val": 4, "n_test": 4, **kw}


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> MultiDataModule:
    root = tmp_path_factory.mktemp("multi")
    dm = MultiDataModule(datasets={
        "a": _toy("toy_ap10k", root / "a", sigma=2.0),  # spec keys of a dataset's config are the model's: dropped
        "b": _toy("toy_animalpose", root / "b", n_test=16,
                  protocol={"name": "zeroshot", "held_out_families": ["Equidae"]}),
    }, **LOADER)
    dm.use_spec(make_spec(TINY_NET, dm.ensure_meta(), normalization="imagenet", padding=1.25, sigma=2.0,
                          decode="default", shift_heatmap=True, flip_test=True))
    dm.setup("fit")
    return dm


def test_registered_by_name():
    assert DATAMODULES["multi"] is MultiDataModule and datamodule_class("clamp_pl.data.multi.MultiDataModule")
    assert DATAMODULES["toy_animalpose"] is ToyAnimalPoseDataModule


def test_toy_animalpose_is_the_same_animals_in_other_names(tmp_path):
    ap = ensure_toy_ap10k(tmp_path / "ap", seed=3, n_train=6, n_val=1, n_test=1)
    an = ensure_toy_animalpose(tmp_path / "an", seed=3, n_train=6, n_val=1, n_test=1)
    a, b = (json.loads(p["train"].read_text()) for p in (ap, an))
    names_a, names_b = get_meta("ap10k").keypoint_names, get_meta("animalpose").keypoint_names
    assert b["categories"][0]["keypoints"] == list(names_b)
    assert [x["bbox"] for x in a["annotations"]] == [x["bbox"] for x in b["annotations"]]
    ka = np.array([x["keypoints"] for x in a["annotations"]]).reshape(-1, 17, 3)
    kb = np.array([x["keypoints"] for x in b["annotations"]]).reshape(-1, 20, 3)
    # the points both name alike, and the leg points Animal-Pose names one joint "lower" (elbow = shoulder, ...)
    for x, y in [("left_eye", "L_Eye"), ("root_of_tail", "TailBase"), ("right_back_paw", "R_B_Paw"),
                 ("left_shoulder", "L_F_Elbow"), ("right_elbow", "R_F_Knee"), ("left_hip", "L_B_Elbow"),
                 ("right_knee", "R_B_Knee")]:
        np.testing.assert_array_equal(ka[:, names_a.index(x)], kb[:, names_b.index(y)])
    for name in ("Throat", "Withers", "L_EarBase", "R_EarBase"):  # points only Animal-Pose names: labelled
        assert (kb[:, names_b.index(name), 2] > 0).mean() > 0.5
    # the images do not depend on the vocabulary
    img = sorted(ap["images"].rglob("*.jpg"))[0]
    assert img.read_bytes() == (an["images"] / img.relative_to(ap["images"])).read_bytes()


def test_items_are_padded_to_the_union_with_zero_weights(multi):
    meta, chans = multi.meta, multi.channels
    assert meta.num_keypoints == 29 and chans["a"] == list(range(17))
    train = multi.datasets["train"]
    n_a = len(multi.parts["a"].datasets["train"])
    for index in (0, n_a):  # one sample of each dataset
        item = train[index]
        d = int(item["dataset"])
        own = torch.zeros(29, dtype=torch.bool)
        own[chans["ab"[d]]] = True
        assert item["heatmaps"].shape[0] == item["keypoint_weights"].shape[0] == 29
        assert not item["keypoint_weights"][~own].any() and not item["peak_weights"][~own].any()
        assert not item["heatmaps"][~own].any() and not item["visible"][~own].any()
        assert item["keypoint_weights"][own].any()
        raw = multi.parts["ab"[d]].datasets["train"][index - d * n_a]
        assert raw["image"].shape == item["image"].shape
    # the padded instances (the pose prior of the spec is fitted on them) carry each dataset's labels in place
    inst = multi.instances["train"][n_a]
    own_b = multi.parts["b"].instances["train"][0]
    np.testing.assert_array_equal(inst.keypoints[chans["b"]], own_b.keypoints)


def test_each_dataset_keeps_its_protocol_and_is_scored_alone(multi):
    assert {i.family for i in multi.parts["b"].instances["test"]} == {"Equidae"}
    assert "Equidae" not in {i.family for i in multi.parts["b"].instances["train"]}
    assert len(multi.parts["a"].instances["test"]) == multi.parts["a"].reports["test"].counts["instances"]  # supervised
    sets = multi.eval_sets("test")
    assert [s.name for s in sets] == ["toy_ap10k", "toy_animalpose"] and [s.index for s in sets] == [0, 1]
    assert sets[1].meta.keypoint_names == get_meta("animalpose").keypoint_names
    assert sets[1].channels == tuple(multi.channels["b"])
    assert sets[1].gt["annotations"] and all(
        a["id"] in {i.ann_id for i in multi.parts["b"].instances["test"]} for a in sets[1].gt["annotations"])


def test_mixing_ratio_draws_the_asked_shares(tmp_path, multi):
    multi.ratios = {"a": 3.0, "b": 1.0}
    multi.epoch_size = 4000
    try:
        sampler = multi.train_dataloader().sampler
        n_a = len(multi.parts["a"].datasets["train"])
        counts = Counter(int(i >= n_a) for i in sampler)
    finally:
        multi.ratios, multi.epoch_size = None, None
    assert sum(counts.values()) == 4000
    assert counts[0] / 4000 == pytest.approx(0.75, abs=0.03)


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match="data.ratios names \\['c'\\]"):
        MultiDataModule(datasets={"a": _toy("toy_ap10k", tmp_path)}, ratios={"c": 1.0})
    with pytest.raises(ValueError, match="data.datasets.a names no datamodule"):
        MultiDataModule(datasets={"a": {"root": str(tmp_path)}})
    with pytest.raises(ValueError, match="data.datasets is empty"):
        MultiDataModule(datasets={})


def test_restrict_keypoints_cuts_gt_and_meta():
    meta = get_meta("ap10k")
    gt = {"annotations": [{"id": 1, "keypoints": list(range(51)), "num_keypoints": 17}],
          "categories": [{"id": 1, "keypoints": list(meta.keypoint_names), "skeleton": [[1, 2], [1, 3], [4, 5]]}]}
    keep = [2, 1, 0]  # nose, right eye, left eye
    cut_gt, cut = restrict_keypoints(gt, meta, keep)
    assert cut_gt["annotations"][0]["keypoints"] == [6, 7, 8, 3, 4, 5, 0, 1, 2]
    assert cut_gt["categories"][0]["keypoints"] == ["nose", "right_eye", "left_eye"]
    assert cut_gt["categories"][0]["skeleton"] == [[3, 2], [3, 1]]
    assert cut.flip_indices == (0, 2, 1) and list(cut.sigmas) == [meta.sigmas[k] for k in keep]


def test_data_keypoints_trains_on_some_names_only(tmp_path):
    names = [n for n in get_meta("animalpose").keypoint_names if n not in ("L_B_Knee", "R_B_Knee")]
    dm = ToyAnimalPoseDataModule(root=str(tmp_path), n_train=8, n_val=4, n_test=4, keypoints=names, **LOADER)
    dm.use_spec(make_spec(TINY_NET, dm.ensure_meta(), normalization="imagenet", padding=1.25, sigma=2.0,
                          decode="default", shift_heatmap=True, flip_test=True))
    dm.setup("fit")
    assert dm.meta.keypoint_names == tuple(names) and dm.meta.num_keypoints == 18
    assert all(i.keypoints.shape == (18, 3) for i in dm.instances["train"])
    assert all(len(a["keypoints"]) == 54 for a in dm.eval_sets("test")[0].gt["annotations"])
    assert dm.datasets["train"][0]["heatmaps"].shape[0] == 18
    with pytest.raises(ValueError, match=r"data.keypoints=.*\['tail tip'\] are not keypoints"):
        ToyAnimalPoseDataModule(root=str(tmp_path), n_train=8, n_val=4, n_test=4, keypoints=["tail tip"],
                                **LOADER).ensure_meta()


def test_the_loss_sees_only_each_samples_own_keypoints():
    from types import SimpleNamespace

    from clamp_pl.models import CLAMPLoss
    from clamp_pl.training.module import PoseLitModule

    torch.manual_seed(0)
    b, k, d = 4, 5, 8
    own = {0: torch.tensor([0, 1, 2]), 1: torch.tensor([2, 3, 4])}  # keypoint 2 is shared by name
    out = {"heatmaps": torch.rand(b, k, 6, 6), "spatial_heatmaps": torch.rand(b, k, 6, 6),
           "pixel_embeddings": torch.randn(b, d, 3, 3), "prompt_embeddings": torch.randn(b, k, d),
           "logit_scale": torch.tensor(10.0)}
    batch = {"heatmaps": torch.rand(b, k, 6, 6), "keypoint_weights": torch.ones(b, k),
             "peak_index": torch.randint(0, 9, (b, k)), "peak_weights": torch.ones(b, k),
             "dataset": torch.tensor([0, 1, 1, 0])}
    for i, ds in enumerate(batch["dataset"].tolist()):  # a padded sample: zero weight outside its vocabulary
        mask = torch.ones(k, dtype=torch.bool)
        mask[own[ds]] = False
        batch["keypoint_weights"][i, mask] = 0
        batch["peak_weights"][i, mask] = 0
    module = SimpleNamespace(criterion=CLAMPLoss(), dataset_channels=own)
    losses = PoseLitModule._losses(module, out, batch)
    # each dataset's samples on its own keypoints, weighted by their share of the batch
    expected = 0.0
    for ds, chans in own.items():
        rows = (batch["dataset"] == ds).nonzero()[:, 0]
        sub_out = {**out, **{key: out[key][rows][:, chans] for key in ("heatmaps", "spatial_heatmaps",
                                                                       "prompt_embeddings")},
                   "pixel_embeddings": out["pixel_embeddings"][rows]}
        sub_batch = {key: batch[key][rows][:, chans] for key in ("heatmaps", "keypoint_weights", "peak_index",
                                                                 "peak_weights")}
        expected = expected + len(rows) / b * CLAMPLoss()(sub_out, sub_batch)["loss"]
    assert losses["loss"] == pytest.approx(float(expected), rel=1e-5)
    # another dataset's keypoint (a prompt the sample never had) changes nothing: not even as a negative
    out["prompt_embeddings"][0, 4] = torch.randn(d)
    out["heatmaps"][0, 3:] = 7.0
    assert PoseLitModule._losses(module, out, batch)["loss"] == pytest.approx(float(losses["loss"]), rel=1e-6)


def test_top_level_settings_reach_the_datasets_that_have_them(tmp_path):
    dm = MultiDataModule(datasets={"a": _toy("toy_ap10k", tmp_path / "a"), "b": _toy("toy_animalpose", tmp_path / "b")},
                         n_train=5, **LOADER)
    assert dm.parts["a"].sizes["n_train"] == dm.parts["b"].sizes["n_train"] == 5
    with pytest.raises(ValueError, match="data.split_seed is not a setting"):
        MultiDataModule(datasets={"a": _toy("toy_ap10k", tmp_path / "a")}, split_seed=3, **LOADER)
