"""The run directory is the model: checkpoints written before the spec existed still load, model files work
wherever checkpoints do, a truncated ``last.ckpt`` does not stop a resume, inference imports neither Lightning
nor Hydra nor OmegaConf, and (slow) a run at a non-default input size is evaluated, predicted and exported from its
run dir alone."""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from clamp_pl.api import coco_result, load_model
from clamp_pl.inference import checkpoint
from clamp_pl.inference.checkpoint import SPEC_KEY, atomic_torch_save, load_checkpoint, save_model_file

REPO = Path(__file__).resolve().parents[2]
EVAL_QUIET = ["extras.print_config=false", "trainer.enable_progress_bar=false"]


def _best(run: Path) -> Path:
    return checkpoint.resolve_checkpoint(run, prefer="best")


def _legacy_copy(run: Path, dest: Path) -> Path:
    """``dest``: a copy of the run whose best checkpoint is in the format written before checkpoints carried a
    spec (the network, meta and test settings as PoseLitModule's hyper-parameters; no spec anywhere)."""
    shutil.copytree(run / ".hydra", dest / ".hydra")
    ckpt = torch.load(_best(run), map_location="cpu", weights_only=True)
    spec = ckpt["hyper_parameters"]["spec"]
    meta = spec["meta"]
    ckpt["hyper_parameters"] = {
        "net": {**spec["net"], "heatmap_size": spec["heatmap_size"]},
        "prompts": meta["prompts"], "flip_indices": meta["flip_indices"], "sigmas": meta["sigmas"],
        "heatmap_size": spec["heatmap_size"], "feature_stride": 32, "keypoint_names": meta["keypoint_names"],
        "skeleton": meta["skeleton"], "species": meta["species"],
        "families": {f: [c for c, g in meta["species_to_family"].items() if g == f]
                     for f in set(meta["species_to_family"].values())},
        "dataset_name": spec["data"]["name"], "loss": None, "optimizer": None, "scheduler": None,
        "test_cfg": {"flip_test": True, "shift_heatmap": True, "decode": "default"},
        "compile": False, "channels_last": False, "nonfinite": "skip",
    }
    out = dest / "checkpoints" / "epoch_000.ckpt"
    atomic_torch_save(ckpt, out)
    # the run's own config as Hydra wrote it then: the data node still had the model-side keys
    cfg_file = dest / ".hydra" / "config.yaml"
    text = cfg_file.read_text().replace("data:\n", "data:\n  input_size:\n  - ${model.net.image_size}\n"
                                        "  - ${model.net.image_size}\n  feature_stride: 32\n", 1)
    cfg_file.write_text(text)
    return out


def test_legacy_checkpoint_loads_and_predicts_the_same(tiny_run, tmp_path, caplog):
    legacy = _legacy_copy(tiny_run, tmp_path / "legacy")
    checkpoint._warned_legacy.clear()
    with caplog.at_level(logging.WARNING, logger="clamp_pl.inference.checkpoint"):
        spec_old, state_old = load_checkpoint(legacy)
        load_checkpoint(legacy)
    assert caplog.text.count("written before checkpoints carried a model spec") == 1  # warned once
    spec_new, state_new = load_checkpoint(_best(tiny_run))
    for field in ("net", "input_size", "feature_grid", "heatmap_size", "normalization", "mean", "std", "padding",
                  "sigma", "decode", "shift_heatmap", "flip_test"):
        assert getattr(spec_old, field) == getattr(spec_new, field), field
    assert spec_old.meta == spec_new.meta and spec_old.data["name"] == spec_new.data["name"]
    assert state_old.keys() == state_new.keys()
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    a = load_model(legacy, device="cpu").predict(image)[0][0]
    b = load_model(tiny_run, device="cpu").predict(image)[0][0]
    np.testing.assert_array_equal(a["keypoints"], b["keypoints"])


def test_legacy_run_dir_evaluates_on_its_own_data(tiny_run, tmp_path, make_cfg):
    from clamp_pl.eval import evaluate

    _legacy_copy(tiny_run, tmp_path / "legacy")
    results = json.loads((tiny_run / "results.json").read_text())
    cfg = make_cfg(f"ckpt_path={tmp_path / 'legacy'}", "+trainer.limit_test_batches=1", *EVAL_QUIET,
                   config_name="eval", fast=False)
    metrics, objs = evaluate(cfg)
    assert objs["datamodule"].name == "toy_ap10k" and metrics["test/AP"] == results["test/AP"]


def test_model_file_works_wherever_a_checkpoint_does(tiny_run, tmp_path, make_cfg):
    from clamp_pl.cli.build import build_training
    from clamp_pl.eval import evaluate

    spec, state = load_checkpoint(tiny_run)
    save_model_file(tmp_path / "shared" / "model.pt", spec, state)
    image = np.random.default_rng(1).integers(0, 255, (100, 90, 3), dtype=np.uint8)
    a = load_model(tmp_path / "shared", device="cpu").predict(image)[0][0]
    b = load_model(tiny_run, device="cpu").predict(image)[0][0]
    np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
    results = json.loads((tiny_run / "results.json").read_text())
    cfg = make_cfg(f"ckpt_path={tmp_path / 'shared' / 'model.pt'}", "+trainer.limit_test_batches=1", *EVAL_QUIET,
                   config_name="eval", fast=False)
    assert evaluate(cfg)[0]["test/AP"] == results["test/AP"]
    _, _, model = build_training(make_cfg("experiment=supervised_toy"), None)
    assert model.load_weights_from(tmp_path / "shared").name == "model.pt"
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items())
    from clamp_pl.train import train

    with pytest.raises(ValueError, match="is a model file .* init_from="):
        train(make_cfg("experiment=supervised_toy", f"ckpt_path={tmp_path / 'shared' / 'model.pt'}"))


def test_resume_from_a_run_dir_whose_last_checkpoint_is_truncated(tiny_run, tmp_path, make_cfg, caplog):
    from clamp_pl.train import train
    from clamp_pl.training.callbacks.checkpoint_io import AtomicCheckpointIO

    run = tmp_path / "crashed"
    shutil.copytree(tiny_run / "checkpoints", run / "checkpoints")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # what a kill -9 during a plain torch.save leaves
    last.touch()  # the newest file
    epoch = torch.load(_best(tiny_run), weights_only=True)["epoch"]
    cfg = make_cfg("experiment=supervised_toy", f"ckpt_path={run}", f"trainer.max_epochs={epoch + 2}",
                   "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false")
    with caplog.at_level(logging.WARNING, logger="clamp_pl.inference.checkpoint"):
        _, objs = train(cfg)
    assert "last.ckpt: not a readable checkpoint" in caplog.text and "using" in caplog.text
    trainer = objs["trainer"]
    assert trainer.current_epoch == epoch + 2 and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    new_last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(new_last, weights_only=True)
    # one spec per checkpoint: the hyper-parameter, no second copy
    assert saved["hyper_parameters"]["spec"] == load_checkpoint(tiny_run)[0].to_dict() and SPEC_KEY not in saved
    assert not [p for p in new_last.parent.iterdir() if p.suffix == ".tmp"]


#: what inference must never import: the training, configuration and experiment-tracking stacks
TRAINING_STACK = ("pytorch_lightning", "lightning", "lightning_fabric", "hydra", "omegaconf", "torchmetrics",
                  "xtcocotools", "wandb")


def test_inference_imports_neither_lightning_nor_hydra(tiny_run, tmp_path):
    """In a fresh interpreter: import every inference module, load a run, predict an image folder and a video
    and run the export wrapper of the network; none of :data:`TRAINING_STACK` may be loaded (the slow test below
    exports to ONNX)."""
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys, traceback
        STACK = {TRAINING_STACK!r}
        who = {{}}  # guarded library -> the file that first imported it

        class Watch:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in STACK and top not in who:
                    frames = [f.filename for f in traceback.extract_stack()
                              if "importlib" not in f.filename and f.filename != "<string>"]
                    who[top] = frames[-1] if frames else "?"
                return None

        sys.meta_path.insert(0, Watch())
        import cv2
        import numpy as np
        import torch
        import clamp_pl.api, clamp_pl.inference
        for m in pkgutil.iter_modules(clamp_pl.inference.__path__):
            importlib.import_module("clamp_pl.inference." + m.name)
        from clamp_pl.inference.images import ImageJob, run_prediction
        from clamp_pl.inference.video import run_video_prediction
        from pathlib import Path
        out = Path({str(tmp_path)!r})
        est = clamp_pl.api.load_model({str(tiny_run)!r}, device="cpu")
        est.predict(np.zeros((64, 80, 3), np.uint8), flip_test=True)
        cv2.imwrite(str(out / "a.png"), np.zeros((64, 80, 3), np.uint8))
        run_prediction(est, [ImageJob(out / "a.png", "a.png", 0)], out / "images", visualize=True)
        w = cv2.VideoWriter(str(out / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 64))
        for _ in range(3):
            w.write(np.zeros((64, 80, 3), np.uint8))
        w.release()
        run_video_prediction(est, out / "v.avi", out / "video", track="follow", visualize=False)
        clamp_pl.inference.onnx.HeatmapModel(est.net)(torch.zeros(1, 3, *est.input_size[::-1]))
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(STACK))
        print("LOADED", {{m: who.get(m, "?") for m in loaded}})
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = ast.literal_eval(out.stdout.split("LOADED ", 1)[1].strip().splitlines()[0])
    # timm (open_clip's dependency) tries ``import wandb`` in timm.utils.summary whenever wandb is installed; no
    # clamp_pl module may import any of these, directly or through another clamp_pl module
    ours = {m: f for m, f in loaded.items() if "clamp_pl" in f or "site-packages" not in f}
    assert not ours, ours
    assert set(loaded) <= {"wandb"} and all("/timm/" in f for f in loaded.values()), loaded


# ---------------------------------------------------------------- a new user's session, end to end
@pytest.mark.slow
def test_non_default_input_size_run_dir_is_the_model(tmp_path, data_dir):
    """Train clamp_tiny at 96 px (default 128), then from the run dir alone: ``python -m clamp_pl.eval
    ckpt_path=<run dir>`` reproduces the run's test metrics exactly, the API and ``python -m clamp_pl.predict``
    predict identically, and ``python -m clamp_pl.export`` writes a verified ONNX model."""
    from conftest import FAST_OVERRIDES, compose_cfg
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from clamp_pl.train import train

    run = tmp_path / "run"
    cfg = compose_cfg("train", [*FAST_OVERRIDES, "experiment=supervised_toy", "model.net.image_size=96",
                                "trainer.limit_test_batches=1.0"], run, data_dir)
    metrics, _ = train(cfg)
    saved = cfg.copy()
    with open_dict(saved):
        del saved["hydra"]
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")  # as the CLI leaves it
    GlobalHydra.instance().clear()
    results = json.loads((run / "results.json").read_text())
    assert results["test/AP"] == metrics["test/AP"]
    assert results["test/PCK@0.2"] > 0  # a comparison of numbers that depend on the weights, not of zeros

    # the commands run with this process's thread count: another count sums convolutions in another order, and
    # the barely trained heatmaps have near-ties that a last-bit difference moves to another cell
    threads = str(torch.get_num_threads())

    def cli(module: str, *args: str) -> None:
        out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                             timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": threads})
        assert out.returncode == 0, out.stderr[-4000:]

    cli("clamp_pl.eval", f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'eval'}")
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    print(f"96 px run: test/AP {results['test/AP']:.4f}, PCK@0.2 {results['test/PCK@0.2']:.4f}; eval from the run "
          f"dir: {len(evaluated)} metrics, {sum(evaluated[k] != v for k, v in results.items())} differ")
    assert evaluated == results

    est = load_model(run, device="cpu")
    assert est.input_size == (96, 96) and est.heatmap_size == (24, 24)
    ann_file = next((data_dir / "toy_ap10k").rglob("*test*.json"))
    gt = json.loads(ann_file.read_text())
    images = {im["id"]: im for im in gt["images"][:3]}
    folder = tmp_path / "images"
    folder.mkdir()
    for im in images.values():
        shutil.copy(next((data_dir / "toy_ap10k").rglob(Path(im["file_name"]).name)), folder)
    cli("clamp_pl.predict", f"ckpt_path={run}", f"input={folder}", f"output_dir={tmp_path / 'pred'}", "device=cpu",
        f"hydra.run.dir={tmp_path / 'pred_run'}")
    written = {p["file_name"]: p for p in json.loads((tmp_path / "pred" / "predictions.json").read_text())}
    assert len(written) == len(images)
    for im in images.values():
        name = Path(im["file_name"]).name
        ours = coco_result(est.predict([folder / name])[0][0], image_id=written[name]["image_id"])
        assert ours["keypoints"] == written[name]["keypoints"] and ours["score"] == written[name]["score"]

    cli("clamp_pl.export", f"ckpt_path={run}", f"output={tmp_path / 'model.onnx'}",
        f"hydra.run.dir={tmp_path / 'export_run'}")
    side = json.loads((tmp_path / "model.json").read_text())
    assert side["input_size"] == [96, 96] and side["heatmap_size"] == [24, 24]
    assert side["verified_max_abs_diff"] <= 1e-4


def test_run_dir_written_before_the_layout_change_still_evaluates(tmp_path, monkeypatch, make_cfg):
    """``tests/fixtures/run_dir_v1``: a run dir written by the code before the package layout changed (image-only
    tiny ViT, 2 training batches; its optimiser state removed to keep it small). Its spec names the datamodule by
    the module path of that time (``clamp_pl.data.datamodule.ToyAP10KDataModule``) and its data root relatively
    (``data/toy_ap10k``, generated here). ``eval ckpt_path=<run dir>`` gives the metrics that code's own eval gave
    (``run_dir_v1_eval_results.json``), and on the training run's one test batch its own ``results.json``."""
    from clamp_pl.eval import evaluate

    fixture = REPO / "tests" / "fixtures" / "run_dir_v1"
    spec, _ = load_checkpoint(fixture)
    assert spec.data["config"]["_target_"] == "clamp_pl.data.datamodule.ToyAP10KDataModule"
    run = tmp_path / "old_run"
    shutil.copytree(fixture, run)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(f"ckpt_path={run}", *EVAL_QUIET, config_name="eval", fast=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the expected metrics were computed at one thread: same summation order
    try:
        metrics, objs = evaluate(cfg)
    finally:
        torch.set_num_threads(threads)
    expected = json.loads((REPO / "tests" / "fixtures" / "run_dir_v1_eval_results.json").read_text())
    assert objs["datamodule"].name == "toy_ap10k"
    assert set(expected) <= set(metrics)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    # with the training run's test budget (one batch), the run's own results.json
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    cfg = make_cfg(f"ckpt_path={run}", "+trainer.limit_test_batches=1", *EVAL_QUIET, config_name="eval", fast=False)
    torch.set_num_threads(1)
    try:
        own = evaluate(cfg)[0]
    finally:
        torch.set_num_threads(threads)
    results = json.loads((fixture / "results.json").read_text())
    assert len(results) == 37
    for key, value in results.items():
        assert own[key] == pytest.approx(value, abs=1e-6), key
