"""The shipped starting points (``clamp_pl/resources/toy_pretrained/``, made by ``scripts/pretrain_toy.py``: CLAMP's
concat head, and ``--head prompt``) load as model files, are small, name no folder of the machine that made them,
and still score what their JSON records (measured again here by the eval entry point on the same toy val/test
images)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from clamp_pl.data.toy import GENERATOR_VERSION
from clamp_pl.inference.checkpoint import MODEL_FILE_KEY, load_checkpoint, read_checkpoint_file
from clamp_pl.tools.demo import PRETRAINED, PRETRAINED_EVALS, PRETRAINED_PROMPT, RECORDED, measure_pretrained

#: shipped file -> the keypoint head it was trained with
SHIPPED = {PRETRAINED: "concat", PRETRAINED_PROMPT: "prompt"}


@pytest.mark.parametrize("file", list(SHIPPED), ids=list(SHIPPED.values()))
def test_shipped_file_loads_compact_and_portable(file):
    record = json.loads(file.with_suffix(".json").read_text())
    assert file.stat().st_size <= 10 * 2**20 and record["bytes"] == file.stat().st_size
    raw = read_checkpoint_file(file)
    assert raw[MODEL_FILE_KEY] == 1
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    spec, state = load_checkpoint(file)
    net = spec.build_network()  # pretrained=None: nothing read or downloaded
    net.load_state_dict(state)  # strict: every tensor of the network is in the file
    assert spec.net["clip_model"] == "clamp-tiny-rn" and spec.num_keypoints == 17 and spec.head == SHIPPED[file]
    assert "/work/" not in json.dumps(spec.to_dict()) and spec.data["config"]["root"] == "data/toy_ap10k"
    # what it was trained on: the toy set of this generator version, Equidae held out
    assert record["data"]["version"] == GENERATOR_VERSION
    assert record["protocol"] == {"name": "zeroshot", "held_out_families": ["Equidae"]}
    assert set(record["metrics"]) == set(PRETRAINED_EVALS)


@pytest.mark.parametrize("file", list(SHIPPED), ids=list(SHIPPED.values()))
def test_shipped_file_scores_its_recorded_metrics(file, tmp_path):
    record = json.loads(file.with_suffix(".json").read_text())
    # the toy set's val/test images do not depend on n_train: a small training split is enough here
    measured = measure_pretrained(file, [f"paths.data_dir={tmp_path}", "data.n_train=16"])
    for name, recorded in record["metrics"].items():
        for key in RECORDED:
            assert measured[name][key] == pytest.approx(recorded[key], abs=2e-3), (name, key)


@pytest.mark.slow
def test_script_trains_converts_and_records(tmp_path):
    """scripts/pretrain_toy.py --head prompt end to end, on a tiny toy set and two training batches."""
    spec = importlib.util.spec_from_file_location("pretrain_toy", Path(__file__).parents[2] / "scripts" / "pretrain_toy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "model.pt"
    script.main(["--head", "prompt", "--out", str(out), "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                 "trainer.check_val_every_n_epoch=1", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.log_dir={tmp_path / 'logs'}", "data.n_train=24", "data.n_val=24", "data.n_test=48",
                 "data.num_workers=0", "data.persistent_workers=false", "trainer.enable_progress_bar=false",
                 "callbacks.rich_progress_bar=null"])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"].startswith("python scripts/pretrain_toy.py --head prompt") and record["train_seconds"] > 0
    assert record["seed"] == 0 and record["data"]["n_train"] == 24 and record["epochs"] == record["max_epochs"] == 1
    assert record["overrides"][0] == "experiment=pretrain_toy_prompt" and record["source_epoch"] == 1
    assert set(record["metrics"]) == set(PRETRAINED_EVALS) and record["bytes"] == out.stat().st_size
    spec, state = load_checkpoint(out)
    spec.build_network().load_state_dict(state)
    assert spec.head == "prompt"
    assert list((tmp_path / "logs" / "pretrain_toy").iterdir())  # the training run's own dir
