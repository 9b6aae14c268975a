"""python -m clamp_pl.tools.import_official: an official-layout checkpoint of a tiny CLAMP becomes a run dir that
load_model and eval accept, with the network, weights and official test settings of the checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.official_layout import mmpose_checkpoint, to_official

from clamp_pl.data.metainfo import get_meta
from clamp_pl.models import CLAMP

REPO = Path(__file__).parents[2]
AP10K_SAMPLE = REPO / "tests" / "fixtures" / "ap10k"


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory) -> tuple[Path, CLAMP]:
    """A tiny ViT CLAMP on the AP-10K keypoints, saved as the authors' code saves a checkpoint."""
    torch.manual_seed(0)
    src = CLAMP(clip_model="clamp-tiny-vit", pretrained=None, image_size=64, prompts=get_meta("ap10k").prompts,
                heatmap_size=(16, 16), class_embedding_twice=True, text_context_length=13, decoder_width=32,
                decoder_layers=2, quick_gelu=True).eval()
    path = tmp_path_factory.mktemp("official") / "CLAMP ViT-B ap10k.pth"  # a space: the CLI must quote it
    torch.save(mmpose_checkpoint(to_official(src, "clamp-tiny-vit", 2)), path)
    return path, src


@pytest.fixture(scope="module")
def ap10k_root(tmp_path_factory) -> Path:
    """The AP-10K layout with the two-image sample as every split."""
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "ap10k" / "annotations").mkdir(parents=True)
    shutil.copytree(AP10K_SAMPLE, data_dir / "ap10k" / "data", ignore=shutil.ignore_patterns("*.json"))
    for split in ("train", "val", "test"):
        shutil.copy(AP10K_SAMPLE / "test_ap10k.json", data_dir / "ap10k" / "annotations" / f"ap10k-{split}-split1.json")
    return data_dir


def _overrides(path: Path, out: Path, data_dir: Path, data: str = "ap10k") -> list[str]:
    return [f"checkpoint='{path}'", "model=clamp_vitb16", "model.net.clip_model=clamp-tiny-vit", f"data={data}",
            f"out={out}", f"paths.data_dir={data_dir}", "data.num_workers=0", "data.persistent_workers=false"]


@pytest.fixture(scope="module")
def imported(official_pth, ap10k_root, tmp_path_factory) -> Path:
    from conftest import compose_cfg
    from hydra.core.global_hydra import GlobalHydra

    from clamp_pl.tools.import_official import import_official

    path, _ = official_pth
    out = tmp_path_factory.mktemp("imported") / "clamp_vitb16_official"
    model_file = import_official(compose_cfg("import_official", _overrides(path, out, ap10k_root), out, ap10k_root))
    GlobalHydra.instance().clear()
    assert model_file == out / "model.pt"
    return out


def test_import_writes_a_run_dir_load_model_accepts(imported, official_pth):
    from clamp_pl.api import load_model

    _, src = official_pth
    assert (imported / "model.pt").is_file()
    est = load_model(imported)
    assert est.spec.net["class_embedding_twice"] and est.spec.net["text_context_length"] == 13
    assert est.spec.net["pretrained"] is None and est.spec.net["quick_gelu"] is True and est.net.quick_gelu
    assert est.spec.flip_test and est.spec.shift_heatmap and est.spec.decode == "default"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(est.net(x)["heatmaps"], src(x)["heatmaps"], rtol=0, atol=0)
    record = json.loads((imported / "import.json").read_text())
    assert set(record["dropped"]) == {"text_projection", "prompt_encoder.positional_embedding",
                                      "prompt_encoder.text_projection"}
    assert record["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.747)
    assert record["meta"]["mmcv_version"] == "1.4.0" and len(record["sha256"]) == 64


def test_imported_run_dir_predicts_and_evaluates_on_val(imported, make_cfg):
    from clamp_pl.api import load_model
    from clamp_pl.eval import evaluate

    est = load_model(imported)
    ann = json.loads((AP10K_SAMPLE / "test_ap10k.json").read_text())
    image = AP10K_SAMPLE / ann["images"][0]["file_name"]
    preds = est.predict([image])
    assert len(preds) == 1 and np.isfinite(np.asarray(preds[0][0]["keypoints"], dtype=float)).all()  # image, box
    cfg = make_cfg(f"ckpt_path={imported}", "split=val", "extras.print_config=false",
                   "trainer.enable_progress_bar=false", config_name="eval", fast=False)
    metrics, _ = evaluate(cfg)
    assert "val/AP" in metrics and np.isfinite(metrics["val/AP"])


def test_wrong_dataset_is_named(official_pth, ap10k_root, tmp_path):
    from conftest import compose_cfg
    from hydra.core.global_hydra import GlobalHydra

    from clamp_pl.tools.import_official import import_official

    path, _ = official_pth
    cfg = compose_cfg("import_official", _overrides(path, tmp_path, ap10k_root, data="animalpose"), tmp_path,
                      ap10k_root)
    GlobalHydra.instance().clear()
    with pytest.raises(ValueError, match="predicts 17 keypoints but data=animalpose has 20"):
        import_official(cfg)


@pytest.mark.slow
def test_cli_takes_the_checkpoint_as_a_positional_path(official_pth, tmp_path):
    path, _ = official_pth
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "clamp_pl.import_official", str(path), "model=clamp_vitb16",
           "model.net.clip_model=clamp-tiny-vit", "data=ap10k", f"out={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.pt").is_file() and (out / "import.json").is_file()
    assert "python -m clamp_pl.eval ckpt_path=" in done.stdout + done.stderr


def test_imported_run_dir_exports_to_onnx(imported, tmp_path):
    from conftest import compose_cfg

    from clamp_pl.export import export

    out = tmp_path / "official.onnx"
    result = export(compose_cfg("export", [f"ckpt_path={imported}", f"output={out}", "opset=17"], tmp_path / "run",
                                tmp_path))
    assert out.is_file() and result["max_abs_diff"] is not None and result["max_abs_diff"] <= 1e-4


def test_a_file_that_is_not_a_clamp_checkpoint_is_named(ap10k_root, tmp_path):
    """A state dict of something else (here a torchvision-like classifier) is refused with the file's name and
    the key it lacks."""
    from conftest import compose_cfg
    from hydra.core.global_hydra import GlobalHydra

    from clamp_pl.tools.import_official import import_official

    other = tmp_path / "resnet_classifier.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}}, other)
    cfg = compose_cfg("import_official", _overrides(other, tmp_path, ap10k_root), tmp_path, ap10k_root)
    GlobalHydra.instance().clear()
    with pytest.raises(ValueError, match=r"resnet_classifier\.pth: not an official CLAMP checkpoint"):
        import_official(cfg)
