"""Across vocabularies, end to end on the toy sets with the tiny CLIP's prompt head: a run on two datasets with
different keypoint names reports per-dataset metrics and predicts their union; a model of one vocabulary is
evaluated on the other by name (matched subset, open vocabulary, keypoints=[...])."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from clamp_pl.data.metainfo import get_meta

TINY = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null",
        "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1",
        "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=3", "+trainer.limit_test_batches=3",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "data.batch_size=8", "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false"]


def _sizes(prefix: str) -> list[str]:
    return [f"{prefix}.n_train=48", f"{prefix}.n_val=12", f"{prefix}.n_test=12"]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    from conftest import compose_cfg

    from clamp_pl.train import train

    run_dir = tmp_path_factory.mktemp("multi") / "run"
    cfg = compose_cfg("train", ["experiment=supervised_multi_toy", *TINY, *_sizes("data.datasets.a"),
                                *_sizes("data.datasets.b")], run_dir, data_dir)
    metrics, _ = train(cfg)
    return run_dir, metrics


@pytest.fixture(scope="module")
def ap10k_run(tmp_path_factory, data_dir) -> Path:
    from conftest import compose_cfg

    from clamp_pl.train import train

    run_dir = tmp_path_factory.mktemp("ap10k") / "run"
    cfg = compose_cfg("train", ["experiment=supervised_toy", "model.net.head=prompt", *TINY, *_sizes("data")],
                      run_dir, data_dir)
    train(cfg)
    return run_dir


def test_two_vocabularies_train_and_report_per_dataset(multi_run):
    run_dir, metrics = multi_run
    for split in ("val", "test"):
        per = [metrics[f"{split}/AP/{d}"] for d in ("toy_ap10k", "toy_animalpose")]
        assert metrics[f"{split}/AP"] == pytest.approx(sum(per) / 2)
    results = json.loads((run_dir / "results.json").read_text())
    assert {"test/AP/toy_ap10k", "test/AP/toy_animalpose", "test/PCK@0.1/toy_animalpose", "test/AP"} <= set(results)
    # each dataset predicted and scored on its own keypoints
    for name, k in (("toy_ap10k", 17), ("toy_animalpose", 20)):
        preds = json.loads((run_dir / "predictions" / name / "test_predictions.json").read_text())
        assert preds and all(len(p["keypoints"]) == 3 * k for p in preds)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/AP", "val/AP/toy_ap10k", "val/AP/toy_animalpose"} <= set(header)


def test_a_multi_run_predicts_the_union_and_evaluates_from_its_dir(multi_run, tmp_path, data_dir):
    from conftest import compose_cfg

    from clamp_pl.api import load_model
    from clamp_pl.eval import evaluate

    run_dir, metrics = multi_run
    est = load_model(run_dir)
    names = est.spec.trained_vocabulary
    assert len(names) == 29 and names[:17] == get_meta("ap10k").keypoint_names and "Throat" in names
    image = next((data_dir / "toy_animalpose" / "images" / "test").glob("*.jpg"))
    (inst,) = est.predict([cv2.imread(str(image))], boxes=[[[0, 0, 191, 191]]])[0]
    assert inst["keypoints"].shape == (29, 2) and list(inst["names"]) == list(names)
    cfg = compose_cfg("eval", [f"ckpt_path={run_dir}", "extras.print_config=false",
                               "trainer.enable_progress_bar=false", "+trainer.limit_test_batches=3"],
                      tmp_path / "eval", data_dir)
    again, _ = evaluate(cfg)
    assert again["test/AP/toy_animalpose"] == pytest.approx(metrics["test/AP/toy_animalpose"], abs=1e-6)


def test_cross_dataset_eval_scores_the_matched_names(ap10k_run, tmp_path, data_dir):
    from conftest import compose_cfg

    from clamp_pl.eval import evaluate

    out = tmp_path / "eval"
    cfg = compose_cfg("eval", [f"ckpt_path={ap10k_run}", "data=toy_animalpose", *_sizes("data"),
                               "extras.print_config=false", "trainer.enable_progress_bar=false",
                               "+trainer.limit_test_batches=3", "data.num_workers=0",
                               "data.persistent_workers=false"], out, data_dir)
    metrics, _ = evaluate(cfg)
    mapping = json.loads((out / "vocabulary_mapping.json").read_text())
    matched = {(m["source"], m["target"]) for m in mapping["matched"]}
    assert ("root_of_tail", "TailBase") in matched and ("left_front_paw", "L_F_Paw") in matched
    assert len(matched) == 8 and "Throat" in mapping["unmatched_target"] and "neck" in mapping["unmatched_source"]
    assert any(c["source"] == "left_shoulder" and c["target"] == "L_F_Elbow" for c in mapping["conventions"])
    assert metrics["test/keypoints_matched"] == 8 and metrics["test/open/keypoints"] == 20
    assert 0 <= metrics["test/AP"] <= 1 and 0 <= metrics["test/open/AP"] <= 1
    preds = json.loads((out / "predictions" / "test_predictions.json").read_text())
    assert preds and all(len(p["keypoints"]) == 3 * 8 for p in preds)
    open_preds = json.loads((out / "open" / "predictions" / "test_predictions.json").read_text())
    assert open_preds and all(len(p["keypoints"]) == 3 * 20 for p in open_preds)
    results = json.loads((out / "results.json").read_text())
    assert results["test/open/AP"] == metrics["test/open/AP"]


def test_eval_of_some_names(ap10k_run, tmp_path, data_dir):
    from conftest import compose_cfg

    from clamp_pl.eval import evaluate

    out = tmp_path / "eval"
    cfg = compose_cfg("eval", [f"ckpt_path={ap10k_run}", "data=toy_animalpose", *_sizes("data"),
                               "keypoints=[L_Eye,tail base,Throat]", "extras.print_config=false",
                               "trainer.enable_progress_bar=false", "+trainer.limit_test_batches=3",
                               "data.num_workers=0", "data.persistent_workers=false"], out, data_dir)
    metrics, _ = evaluate(cfg)
    assert metrics["test/keypoints_matched"] == 2 and metrics["test/open/keypoints"] == 3
    mapping = json.loads((out / "vocabulary_mapping.json").read_text())
    assert mapping["data_keypoints"] == ["L_Eye", "TailBase", "Throat"] and mapping["unmatched_target"] == ["Throat"]
