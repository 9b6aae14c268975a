"""``PoseLitModule`` — optimiser parameter groups, the warm-up + multi-step schedule, flip test, the text
tower's cost in validation, and (slow) that the whole thing learns: clamp_tiny overfits two real AP-10K images."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from conftest import TEST_DATA, compose_cfg
from helpers.training import FLIP, HM, NO_DECAY_LEAVES, OPT, RandomPoseData, make_module
from torch.utils.data import DataLoader

from clamp_pl.inference.postprocess import flip_back
from clamp_pl.training.module import PoseLitModule


@pytest.fixture(scope="module")
def module() -> PoseLitModule:
    return make_module().eval()


# ---------------------------------------------------------------- optimiser
def test_param_groups(module):
    (opt,), _ = module.configure_optimizers()
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    counts = Counter(id(p) for g in opt.param_groups for p in g["params"])
    assert set(counts.values()) == {1}  # no parameter twice

    text = {id(p) for p in module.net.prompt_learner.text_tower.parameters()}
    assert text and not text & set(group_of)  # the frozen text tower never reaches the optimiser
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert set(group_of) == trainable

    for name, p in module.net.named_parameters():
        if not p.requires_grad:
            continue
        g = group_of[id(p)]
        backbone = name.startswith("image_tower.")
        assert g["name"].startswith("backbone" if backbone else "head"), name
        assert g["initial_lr"] == pytest.approx(OPT["lr"] * (OPT["backbone_lr_mult"] if backbone else 1.0)), name
        no_decay = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_LEAVES
        assert g["weight_decay"] == (0.0 if no_decay else OPT["weight_decay"]), name
    # spot checks of the rule: norms, biases, gamma, logit scale and context are never decayed
    named = dict(module.net.named_parameters())
    for name in ["prompt_learner.ctx", "gamma", "logit_scale", "image_tower.visual.bn1.weight",
                 "image_tower.visual.bn1.bias", "keypoint_head.final_layer.bias",
                 "image_tower.visual.attnpool.positional_embedding"]:
        assert group_of[id(named[name])]["weight_decay"] == 0.0, name
    for name in ["image_tower.visual.conv1.weight", "keypoint_head.final_layer.weight"]:
        assert group_of[id(named[name])]["weight_decay"] == OPT["weight_decay"], name


@pytest.mark.parametrize(
    ("fused_cfg", "clip", "scaler", "expected"),
    [("auto", None, None, True), ("auto", 1.0, None, True), ("auto", 1.0, object(), False),
     ("auto", None, object(), True), (False, None, None, False)],
)
def test_fused_adamw_when_possible(fused_cfg, clip, scaler, expected):
    model = make_module(optimizer={**OPT, "fused": fused_cfg})
    model.trainer = SimpleNamespace(gradient_clip_val=clip, precision_plugin=SimpleNamespace(scaler=scaler))
    (opt,), _ = model.configure_optimizers()
    assert bool(opt.defaults["fused"]) is expected


def test_fused_option_typo_is_a_clear_error():
    model = make_module(optimizer={**OPT, "fused": "yes"})
    with pytest.raises(ValueError, match="model.optimizer.fused must be auto, true or false, not 'yes'"):
        model.configure_optimizers()


def test_fused_adamw_step_matches_the_loop_implementation():
    """The fused kernel is the default: its updates must be those of the reference AdamW (float rounding)."""
    nets = {}
    for fused in (True, False):
        model = make_module(optimizer={**OPT, "fused": fused}).train()
        (opt,), (sched, _) = model.configure_optimizers()
        sched = sched["scheduler"]
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            x = torch.randn(2, 3, 128, 128, generator=g)
            opt.zero_grad()
            model(x)["heatmaps"].square().mean().backward()
            opt.step()
            sched.step()
        nets[fused] = dict(model.net.named_parameters())
    init = dict(make_module().net.named_parameters())
    for name, p in nets[True].items():
        torch.testing.assert_close(p, nets[False][name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(nets[True]["keypoint_head.final_layer.weight"], init["keypoint_head.final_layer.weight"])


def mmcv_lr(base_lr: float, step: int, steps_per_epoch: int, sch: dict) -> float:
    """mmcv's schedule in closed form: ``base_lr`` x linear warm-up factor (``warmup_ratio`` -> 1 over
    ``warmup_iters`` steps) x ``gamma`` per epoch milestone passed."""
    epoch = step // steps_per_epoch
    f = sch["gamma"] ** sum(epoch >= m for m in sch["milestones"])
    if step < sch["warmup_iters"]:
        r = sch["warmup_ratio"]
        f *= r + (1 - r) * step / sch["warmup_iters"]
    return base_lr * f


@pytest.mark.parametrize("sch", [{"warmup_iters": 250, "warmup_ratio": 1e-3, "milestones": [2, 4], "gamma": 0.1},
                                 {"warmup_iters": 0, "warmup_ratio": 1e-3, "milestones": [1], "gamma": 0.5}])
def test_lr_schedule_is_mmcv_at_every_step(sch):
    """600 steps over 6 epochs of 100, the schedulers stepped as Lightning steps them (the warm-up after every
    optimiser step, the milestones after every epoch): the lr of every group at every step is mmcv's."""
    model = make_module(scheduler=sch)
    (opt,), (warmup, steps) = model.configure_optimizers()
    assert (warmup["interval"], steps["interval"]) == ("step", "epoch")
    base = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    assert base["backbone"] == pytest.approx(OPT["lr"] * OPT["backbone_lr_mult"])
    spe = 100
    for step in range(600):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(mmcv_lr(base[g["name"]], step, spe, sch), rel=1e-9), (step, g["name"])
        opt.step()
        warmup["scheduler"].step()
        if (step + 1) % spe == 0:
            steps["scheduler"].step()


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lightning_steps_the_two_schedulers_as_mmcv():
    """A real fit: 4 epochs of 3 steps, warm-up over 5 steps, milestones at epochs 1 and 3."""
    sch = {"warmup_iters": 5, "warmup_ratio": 0.1, "milestones": [1, 3], "gamma": 0.1}
    model = make_module(scheduler=sch)
    rec = _RecordLR()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=4, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[rec])
    trainer.fit(model, train_dataloaders=DataLoader(RandomPoseData(), batch_size=2))
    base = trainer.optimizers[0].param_groups[0]["initial_lr"]
    assert rec.lrs == pytest.approx([mmcv_lr(base, s, 3, sch) for s in range(12)], rel=1e-9)


# ---------------------------------------------------------------- flip test
def test_flip_back_swaps_mirrors_and_shifts():
    hm = torch.rand(2, 5, 6, 8)
    out = flip_back(hm, FLIP, shift=True)
    plain = flip_back(hm, FLIP, shift=False)
    for k, src in enumerate(FLIP):
        for x in range(8):
            assert torch.equal(plain[:, k, :, x], hm[:, src, :, 7 - x])
        # +1 px: column x takes the mirrored column x - 1; the first column is repeated
        assert torch.equal(out[:, k, :, 1:], plain[:, k, :, :-1])
        assert torch.equal(out[:, k, :, 0], plain[:, k, :, 0])
    # a peak at column c of the mirrored crop lands at w - 1 - c, then + 1 (mmpose's half-pixel fix)
    delta = torch.zeros(1, 5, 6, 8)
    delta[0, 3, 2, 2] = 1.0
    peak = flip_back(delta, FLIP)[0, FLIP[3]].argmax()
    assert divmod(int(peak), 8) == (2, 8 - 1 - 2 + 1)


def test_predict_heatmaps_flip_test_by_hand(module):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 128, 128)
    x = 0.5 * (x + x.flip(-1))  # mirror-symmetric: both passes see the same pixels
    with torch.no_grad():
        hm = module(x)["heatmaps"]
    mirrored = hm[:, FLIP].flip(-1)
    shifted = torch.cat([mirrored[..., :1], mirrored[..., :-1]], dim=-1)
    expected = 0.5 * (hm + shifted)
    got = module.predict_heatmaps(x, flip_test=True)
    assert got.shape == (2, 5, HM, HM)
    tol = 1e-5 * float(hm.abs().max())  # an untrained head's heatmaps are tiny (~1e-8): relative tolerances
    torch.testing.assert_close(got, expected, atol=tol, rtol=1e-4)
    torch.testing.assert_close(module.predict_heatmaps(x, flip_test=False), hm, atol=tol, rtol=1e-4)
    assert (got - hm).abs().max() > 1e3 * tol  # the mirrored pass does change the result


# ---------------------------------------------------------------- text tower cost
def test_text_tower_runs_once_per_validation_epoch():
    """Through Lightning: 2 epochs of 1 training step and 3 flip-tested validation batches -> the text tower runs
    once per training step and once per validation epoch."""
    model = make_module(flip_test=True)
    calls: list[str] = []
    tower = model.net.prompt_learner.text_tower
    tower.register_forward_hook(lambda *_: calls.append("val" if model.trainer.validating else "train"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=1, limit_val_batches=3,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[])
    loader = DataLoader(RandomPoseData(), batch_size=2)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert Counter(calls) == {"train": 2, "val": 2}
    calls.clear()
    trainer.validate(model, dataloaders=loader, verbose=False)
    assert calls == ["val"]


class _Snapshots(pl.Callback):
    """NaN in the image of training batch ``poison``; the module and optimiser state after every batch."""

    def __init__(self, poison: int) -> None:
        self.poison, self.states = poison, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.poison:
            batch["image"][0, 0, 0, 0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0].state_dict()["state"]
        self.states.append(({k: v.clone() for k, v in pl_module.state_dict().items()},
                            {i: {k: v.clone() for k, v in st.items()} for i, st in opt.items()}))


@pytest.mark.parametrize("fused", [True, False])
def test_nonfinite_step_is_skipped_exactly(fused):
    """The NaN batch's step leaves weights, batch-norm statistics and optimiser moments/step counts as they were
    after the previous step, with the fused kernel (flag as a tensor) and with the per-tensor loop (no grads)."""
    model = make_module(optimizer={**OPT, "fused": fused})
    snap = _Snapshots(poison=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[snap])
    trainer.fit(model, train_dataloaders=DataLoader(RandomPoseData(), batch_size=2))
    assert bool(trainer.optimizers[0].defaults["fused"]) is fused
    (before, opt_before), (after, opt_after), (last, _) = snap.states
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for i in opt_before:
        for k in opt_before[i]:
            assert torch.equal(opt_before[i][k], opt_after[i][k]), (i, k)
    assert model.nonfinite_steps == 1
    assert not torch.equal(last["net.keypoint_head.final_layer.weight"], after["net.keypoint_head.final_layer.weight"])
    assert all(torch.isfinite(v).all() for v in last.values() if v.is_floating_point())


def test_fused_skip_needs_no_host_sync(monkeypatch):
    """With a fused optimiser the skip decision stays on the device: no ``item()``/``bool()`` of a tensor."""
    model = make_module().train()
    model.trainer = SimpleNamespace()
    model.trainer.strategy = SimpleNamespace(reduce=lambda t, reduce_op: t)
    model.trainer.precision_plugin = SimpleNamespace()
    model.trainer.barebones = True  # self.log() returns at once
    model.trainer.current_epoch = model.trainer.global_step = 0
    (opt,), _ = model.configure_optimizers()
    batch = next(iter(DataLoader(RandomPoseData(), batch_size=2)))
    batch["image"][0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="barebones"):
        model.training_step(batch, 0).backward()

    def no_sync(*_):
        raise AssertionError("host sync")

    for name in ("item", "__bool__", "tolist", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    model.on_before_optimizer_step(opt)
    monkeypatch.undo()
    assert opt.found_inf.item() == 1.0
    assert model.collect_nonfinite(log_metric=False) == 1


# ---------------------------------------------------------------- learning
@pytest.mark.slow
def test_overfits_two_real_ap10k_images(tmp_path):
    """clamp_tiny from scratch memorises the two AP-10K test images (train = val = test, no augmentation)."""
    from clamp_pl.train import train

    ann = TEST_DATA / "ap10k" / "test_ap10k.json"
    overrides = [
        "trainer=cpu", "data=coco", f"data.train_ann={ann}", f"data.val_ann={ann}", f"data.img_dir={ann.parent}",
        "data.batch_size=2", "data.num_workers=0", "data.persistent_workers=false", "data.pin_memory=false",
        "data.augment.flip_prob=0", "data.augment.half_body_prob=0", "data.augment.shift_prob=0",
        "data.augment.scale_factor=0", "data.augment.rot_prob=0", "extras.print_config=false",
        "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null", "callbacks.keypoint_vis=null",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
        "trainer.max_epochs=120", "trainer.check_val_every_n_epoch=20", "model.optimizer.lr=5e-3",
    ]
    cfg = compose_cfg("train", overrides, tmp_path / "run", tmp_path / "data")
    start = time.monotonic()
    metrics, _ = train(cfg)
    elapsed = time.monotonic() - start
    print(f"overfit: test/AP {metrics['test/AP']:.3f} in {elapsed:.0f} s")
    assert metrics["test/AP"] >= 0.9


def test_a_module_built_for_evaluation_cannot_be_trained_with_made_up_settings():
    model = make_module(optimizer=None)
    with pytest.raises(ValueError, match=r"model.optimizer must set .*missing \['lr', 'weight_decay'"):
        model.configure_optimizers()
