"""The model spec and the checkpoint files: derived geometry, primitives that ``weights_only=True`` loads, model
files, atomic writes, and run-dir resolution that skips a checkpoint cut short by a crash."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from clamp_pl.data.metainfo import get_meta
from clamp_pl.inference.checkpoint import (
    SPEC_KEY,
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    resolve_checkpoint,
    save_model_file,
)
from clamp_pl.spec import ModelSpec, make_spec, network_geometry

TINY_NET = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=96, num_deconv=3, deconv_channels=32,
                upconv_num_deconv=3, upconv_channels=16, decoder_width=64, decoder_layers=2)


def tiny_spec(**kw) -> ModelSpec:
    args = dict(normalization="clip", padding=1.3, sigma=2.5, decode="dark", shift_heatmap=False, flip_test=False,
                data={"name": "toy_ap10k", "config": {"_target_": "x.Y", "root": "/data/toy", "n_test": 24}})
    args.update(kw)
    return make_spec(TINY_NET, get_meta("ap10k"), **args)


@pytest.mark.parametrize("model, size, deconv, stride, grid, heatmap", [
    ("ViT-L-14", 224, 2, 14, 16, 64),
    ("ViT-B-16", 256, 2, 16, 16, 64),
    ("RN50", 256, 3, 32, 8, 64),
    ("clamp-tiny-rn", 128, 3, 32, 4, 32),
    ("clamp-tiny-rn", 96, 3, 32, 3, 24),
])
def test_geometry_is_derived_from_the_open_clip_config(model, size, deconv, stride, grid, heatmap):
    g = network_geometry(model, size, deconv)
    assert (g.stride, g.feature_grid, g.heatmap_size) == (stride, (grid, grid), (heatmap, heatmap))


def test_geometry_errors_name_the_value():
    with pytest.raises(ValueError, match="image_size=100 is not a multiple of ViT-B-16's stride 16"):
        network_geometry("ViT-B-16", 100, 2)
    with pytest.raises(ValueError, match="'no-such-model' is not an open_clip model"):
        network_geometry("no-such-model", 224, 2)


@pytest.mark.parametrize("model, heatmap", [("clamp_vitl14", [64, 64]), ("clamp_vitb16", [64, 64]),
                                            ("clamp_rn50", [64, 64]), ("clamp_tiny", [32, 32])])
def test_build_spec_from_the_configs(make_cfg, model, heatmap):
    """Every model config gets its heatmap size from the network (no network is built: nothing downloads)."""
    from clamp_pl.cli.build import build_spec

    cfg = make_cfg(f"model={model}")
    spec = build_spec(cfg, get_meta("ap10k"), "toy_ap10k")
    assert list(spec.heatmap_size) == heatmap and spec.input_size == (cfg.model.net.image_size,) * 2
    assert spec.data["config"]["datamodule"] == "toy_ap10k" and "_target_" not in spec.data["config"]
    assert not {"sigma", "normalization", "padding"} & set(spec.data["config"])


def test_spec_round_trips_through_torch_weights_only_and_json(tmp_path):
    spec = tiny_spec()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    torch.save({"s": spec.to_dict()}, tmp_path / "s.pt")
    assert ModelSpec.from_dict(torch.load(tmp_path / "s.pt", weights_only=True)["s"]) == spec
    # JSON (and YAML) turn the integer category ids into strings: they come back as ints
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    meta = spec.dataset_meta()
    assert meta.keypoint_names == get_meta("ap10k").keypoint_names and meta.species == get_meta("ap10k").species
    codec = spec.build_codec()
    assert codec.input_size == (96, 96) and codec.heatmap_size == (24, 24) and codec.sigma == 2.5 and codec.unbiased


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="decode must be one of"):
        tiny_spec(decode="soft-argmax")
    with pytest.raises(ValueError, match="normalization must be one of"):
        tiny_spec(normalization="mine")
    with pytest.raises(ValueError, match="net.heatmap_size is not a network argument"):
        make_spec({**TINY_NET, "heatmap_size": [24, 24]}, get_meta("ap10k"), normalization="clip", padding=1.25,
                  sigma=2.0, decode="default", shift_heatmap=True, flip_test=True)
    d = tiny_spec().to_dict()
    del d["codec"]
    with pytest.raises(ValueError, match="no field 'codec'"):
        ModelSpec.from_dict(d)
    with pytest.raises(ValueError, match="version 99 is newer"):
        ModelSpec.from_dict({**tiny_spec().to_dict(), "version": 99})


def test_model_file_round_trip(tmp_path):
    spec = tiny_spec()
    net = spec.build_network()
    path = save_model_file(tmp_path / "model.pt", spec, net.state_dict())
    raw = torch.load(path, weights_only=True)
    assert raw["clamp_pl_model"] == 1 and "optimizer_states" not in raw
    spec2, state = load_checkpoint(tmp_path)  # a folder holding model.pt resolves to it
    assert spec2 == spec and state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="not the LightningModule's"):
        save_model_file(tmp_path / "bad.pt", spec, {f"net.{k}": v for k, v in net.state_dict().items()})


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1}, path)
    with pytest.raises((RuntimeError, pickle.PicklingError)):
        atomic_torch_save({"epoch": 2, "x": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind
    mask = os.umask(0o022)
    try:
        atomic_torch_save({"epoch": 3}, tmp_path / "new.ckpt")
    finally:
        os.umask(mask)
    assert (tmp_path / "new.ckpt").stat().st_mode & 0o777 == 0o644  # as open() would create it, not 0600


def _lightning_like(path: Path, spec: ModelSpec, epoch: int, mtime: float) -> Path:
    net = spec.build_network()
    atomic_torch_save({"epoch": epoch, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                       SPEC_KEY: spec.to_dict(), "pytorch-lightning_version": "2"}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_run_dir_resolution_skips_a_truncated_checkpoint(tmp_path, caplog):
    spec = tiny_spec()
    ckpts = tmp_path / "run" / "checkpoints"
    best = _lightning_like(ckpts / "epoch_001.ckpt", spec, 1, 1000.0)
    last = _lightning_like(ckpts / "last.ckpt", spec, 2, 2000.0)
    assert resolve_checkpoint(tmp_path / "run", prefer="last") == last
    assert resolve_checkpoint(tmp_path / "run", prefer="best") == best
    # kill -9 while last.ckpt was written by a plain torch.save: the file is cut short
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    os.utime(last, (3000.0, 3000.0))
    with caplog.at_level(logging.WARNING, logger="clamp_pl.inference.checkpoint"):
        assert resolve_checkpoint(tmp_path / "run", prefer="last") == best
    assert "skipping" in caplog.text and "last.ckpt" in caplog.text and "not a readable checkpoint" in caplog.text
    assert f"using {best}" in caplog.text
    with pytest.raises(CheckpointError, match="last.ckpt: not a readable checkpoint.*Pass its run directory"):
        load_checkpoint(last)
    best.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint in .* loads"):
        resolve_checkpoint(tmp_path / "run", prefer="last")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path, prefer="best")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nope")


def test_dataset_meta_round_trips_through_json():
    meta = get_meta("ap10k")
    back = type(meta).from_dict(json.loads(json.dumps(meta.to_dict())))  # category ids come back as strings
    assert back.to_dict() == meta.to_dict() and back.families == meta.families
    with pytest.raises(ValueError, match="no field 'prompts'"):
        type(meta).from_dict({k: v for k, v in meta.to_dict().items() if k != "prompts"})


def test_vocabulary_of_names_asked_at_run_time():
    spec = tiny_spec()
    assert spec.trained_vocabulary == get_meta("ap10k").keypoint_names and spec.head == "concat"
    assert spec.vocabulary().to_dict() == spec.meta and spec.untrained(None) == ()
    names = ["nose", "left eye", "R_Eye", "tailTip", "Nearfrontfetlock", "leftEarTip", "right_ear_tip"]
    meta = spec.vocabulary(names)
    ap10k = get_meta("ap10k")
    # trained names (by name or by their prompt) keep the trained prompt and sigma; others are derived from the name
    assert meta.prompts == ("nose", "left eye", "right eye", "tail tip", "near front fetlock", "left ear tip",
                            "right ear tip")
    assert list(meta.sigmas[:3]) == [ap10k.sigmas[2], ap10k.sigmas[0], ap10k.sigmas[1]]
    assert list(meta.sigmas[3:]) == [0.072] * 4
    assert meta.flip_pairs == ((1, 2), (5, 6))  # near/off is not a flip side
    assert set(meta.skeleton) == {(1, 2), (1, 0), (2, 0)}  # AP-10K's eye-eye and eye-nose edges, re-indexed
    assert spec.untrained(names) == ("tailTip", "Nearfrontfetlock", "leftEarTip", "right_ear_tip")
    with pytest.raises(ValueError, match="distinct"):
        spec.vocabulary(["nose", "nose"])
