"""The shipped starting point (``clamp_pl/resources/toy_pretrained/``, made by ``scripts/pretrain_toy.py``) loads
as a model file, is small, names no folder of the machine that made it, and still scores what its JSON records
(measured again here by the eval entry point on the same toy val/test images)."""

from __future__ import annotations

import json

import pytest
import torch

from clamp_pl.checkpoint import MODEL_FILE_KEY, load_checkpoint, read_checkpoint_file
from clamp_pl.data.toy import GENERATOR_VERSION
from clamp_pl.demo import PRETRAINED, PRETRAINED_EVALS, RECORDED, measure_pretrained

RECORD = json.loads(PRETRAINED.with_suffix(".json").read_text())


def test_shipped_file_loads_compact_and_portable():
    assert PRETRAINED.stat().st_size <= 10 * 2**20 and RECORD["bytes"] == PRETRAINED.stat().st_size
    raw = read_checkpoint_file(PRETRAINED)
    assert raw[MODEL_FILE_KEY] == 1
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    spec, state = load_checkpoint(PRETRAINED)
    net = spec.build_network()  # pretrained=None: nothing read or downloaded
    net.load_state_dict(state)  # strict: every tensor of the network is in the file
    assert spec.net["clip_model"] == "clamp-tiny-rn" and spec.num_keypoints == 17
    assert "/work/" not in json.dumps(spec.to_dict()) and spec.data["config"]["root"] == "data/toy_ap10k"
    # what it was trained on: the toy set of this generator version, Equidae held out
    assert RECORD["data"]["version"] == GENERATOR_VERSION
    assert RECORD["protocol"] == {"name": "zeroshot", "held_out_families": ["Equidae"]}
    assert set(RECORD["metrics"]) == set(PRETRAINED_EVALS)


def test_shipped_file_scores_its_recorded_metrics(tmp_path):
    # the toy set's val/test images do not depend on n_train: a small training split is enough here
    measured = measure_pretrained(PRETRAINED, [f"paths.data_dir={tmp_path}", "data.n_train=16"])
    for name, recorded in RECORD["metrics"].items():
        for key in RECORDED:
            assert measured[name][key] == pytest.approx(recorded[key], abs=2e-3), (name, key)
