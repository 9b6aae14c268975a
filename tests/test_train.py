"""The train and eval entry points on CPU with the toy set and the tiny CLIP: the run-dir contract, checkpoints
that load with weights_only=True, eval reproducing the train run's test numbers, weights-only init_from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from clamp_pl.eval import evaluate
from clamp_pl.train import train

SHORT = ["experiment=supervised_toy"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_dir) -> Path:
    from conftest import FAST_OVERRIDES, compose_cfg

    run_dir = tmp_path_factory.mktemp("short") / "run"
    cfg = compose_cfg("train", [*FAST_OVERRIDES, *SHORT], run_dir, data_dir)
    metrics, objs = train(cfg)
    assert "test/AP" in metrics
    return run_dir


def test_fast_dev_run(make_cfg):
    cfg = make_cfg("experiment=supervised_toy", "trainer.fast_dev_run=true")
    metrics, objs = train(cfg)
    assert objs["trainer"].state.finished
    for key in ("train/loss", "train/loss_heatmap", "train/loss_spatial", "train/loss_feature"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key]))


def test_run_dir_contract(short_run):
    assert (short_run / "checkpoints" / "last.ckpt").is_file()
    assert list((short_run / "checkpoints").glob("epoch_*.ckpt"))
    results = json.loads((short_run / "results.json").read_text())
    assert set(results) >= {"test/AP", "test/AP50", "test/AP75", "test/AR"}
    assert all(isinstance(v, float) for v in results.values())
    with open(short_run / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    assert "train/loss_heatmap" in header and "val/AP" in header
    preds = json.loads((short_run / "predictions" / "test_predictions.json").read_text())
    assert preds and {"image_id", "category_id", "keypoints", "score"} <= set(preds[0])
    assert len(preds[0]["keypoints"]) == 17 * 3
    assert (short_run / "vis" / "test_predictions.png").is_file()  # the picture of test predictions
    assert (short_run / "vis" / "test_score_maps.png").is_file()
    assert (short_run / "vis" / "test_keypoint_confusion.png").is_file()
    assert (short_run / "vis" / "test_keypoint_pck.png").is_file()
    table = json.loads((short_run / "predictions" / "test_keypoint_pck.json").read_text())
    assert table["threshold"] == 0.1 and len(table["pck"]["all"]) == 17 and len(table["pck"]) > 1  # + species
    conf = json.loads((short_run / "predictions" / "test_keypoint_confusion.json").read_text())
    assert len(conf["keypoints"]) == 17 and len(conf["counts"]) == 17 and len(conf["counts"][0]) == 17
    counts = [c for row in conf["counts"] for c in row]
    n_diag = sum(conf["counts"][i][i] for i in range(17))
    assert results["test/nearest_correct"] == pytest.approx(n_diag / sum(counts))
    split = json.loads((short_run / "split.json").read_text())
    assert split["protocol"]["name"] == "supervised"


def test_bad_case_gallery_holds_the_lowest_oks(short_run, data_dir):
    """vis/test_worst.json: the test instances with the lowest OKS, recomputed here from the written predictions
    and the ground truth."""
    import numpy as np

    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.data.toy import ensure_toy_ap10k
    from clamp_pl.evaluation import instance_oks

    cases = json.loads((short_run / "vis" / "test_worst.json").read_text())
    assert (short_run / "vis" / "test_worst_predictions.png").is_file()
    gt = json.loads(ensure_toy_ap10k(data_dir / "toy_ap10k", n_train=96, n_val=24, n_test=24)["test"].read_text())
    anns = {a["id"]: a for a in gt["annotations"]}
    preds = [p for p in json.loads((short_run / "predictions" / "test_predictions.json").read_text())
             if np.asarray(anns[p["ann_id"]]["keypoints"]).reshape(-1, 3)[:, 2].any()]
    kp = np.array([p["keypoints"] for p in preds]).reshape(len(preds), 17, 3)
    g = np.array([anns[p["ann_id"]]["keypoints"] for p in preds], dtype=float).reshape(len(preds), 17, 3)
    oks = instance_oks(kp, g, np.array([anns[p["ann_id"]]["area"] for p in preds]), get_meta("ap10k").sigmas)
    expected = sorted(zip(oks.round(4), (p["ann_id"] for p in preds)))[: len(cases)]
    assert len(cases) == min(8, len(preds)) and [c["oks"] for c in cases] == [o for o, _ in expected]
    assert {c["ann_id"] for c in cases} == {a for _, a in expected}


def test_checkpoint_loads_weights_only(short_run):
    ckpt = torch.load(short_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    spec = ckpt["hyper_parameters"]["spec"]  # the one copy of the spec (no "clamp_spec" any more)
    assert spec["meta"]["prompts"][2] == "nose" and len(spec["meta"]["flip_indices"]) == 17
    assert spec["input_size"] == [128, 128] and spec["heatmap_size"] == [32, 32] and spec["feature_grid"] == [4, 4]
    assert spec["data"]["name"] == "toy_ap10k" and spec["data"]["config"]["n_test"] == 24
    assert "clamp_spec" not in ckpt
    assert "rng_states" in ckpt


def test_eval_reproduces_test_metrics(short_run, make_cfg):
    """``eval ckpt_path=<run dir>`` and nothing else but the run's own test batch limit: the run's numbers."""
    results = json.loads((short_run / "results.json").read_text())
    cfg = make_cfg(f"ckpt_path={short_run}", "+trainer.limit_test_batches=2", "extras.print_config=false",
                   "trainer.enable_progress_bar=false", config_name="eval", fast=False)
    metrics, objs = evaluate(cfg)
    assert metrics == results
    assert objs["datamodule"].name == "toy_ap10k" and objs["datamodule"].input_size == (128, 128)
    assert objs["datamodule"].codec is objs["model"].codec  # one codec object: targets and decoding
    # the same data named explicitly (data=...) gives the same numbers
    cfg = make_cfg(f"ckpt_path={short_run}", "data=toy_ap10k", "data.n_train=96", "data.n_val=24", "data.n_test=24",
                   "data.batch_size=8", "data.num_workers=0", "data.persistent_workers=false",
                   "+trainer.limit_test_batches=2", *["extras.print_config=false", "trainer.enable_progress_bar=false"],
                   config_name="eval", fast=False)
    assert evaluate(cfg)[0] == results


def test_eval_refuses_a_model_override_and_unmatched_keypoints(short_run, make_cfg, tmp_path):
    cfg = make_cfg(f"ckpt_path={short_run}", "model=clamp_tiny", config_name="eval", fast=False)
    with pytest.raises(ValueError, match="model= cannot be set"):
        evaluate(cfg)
    # other keypoint names are scored by name; a concat-head model sharing none of them has nothing to score
    cfg = make_cfg(f"ckpt_path={short_run}", "data=toy_animalpose", "keypoints=[Throat,Withers]", config_name="eval")
    with pytest.raises(ValueError, match="no keypoint of the model matches one of the toy_animalpose data by name"):
        evaluate(cfg)
    cfg = make_cfg(f"ckpt_path={short_run}", "data=toy_ap10k", "data.normalization=clip",
                   "extras.print_config=false", config_name="eval", fast=False)
    with pytest.raises(ValueError, match="data.normalization='clip' but the model's normalization is 'imagenet'"):
        evaluate(cfg)
    cfg = make_cfg(f"ckpt_path={short_run}", "data=toy_ap10k", "+data.input_size=[96,96]",
                   "extras.print_config=false", config_name="eval", fast=False)
    with pytest.raises(ValueError, match=r"data.input_size=\[96, 96\] but the model's input_size is \[128, 128\]"):
        evaluate(cfg)


def test_init_from_loads_weights(short_run, make_cfg):
    from clamp_pl.cli.build import build_training
    from clamp_pl.training.module import PoseLitModule

    cfg = make_cfg("experiment=fewshot_toy", f"init_from={short_run}")
    dm, _, model = build_training(cfg, None)
    assert dm.codec is model.codec and dm.datasets  # setup ran (the pose prior): its datasets use that codec too
    assert all(ds.codec is model.codec for ds in dm.datasets.values())
    assert model.load_weights_from(short_run).name.startswith("epoch_")  # a run dir: its best checkpoint
    ref = PoseLitModule.load_from_checkpoint(short_run / "checkpoints" / sorted(
        p.name for p in (short_run / "checkpoints").glob("epoch_*.ckpt"))[-1], weights_only=True)
    for (k, a), (_, b) in zip(model.net.state_dict().items(), ref.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
