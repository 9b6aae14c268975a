"""``clamp_pl.training.optim``: the parameter groups are those PoseLitModule built inline before they moved here, and the
module and the benchmark scripts use them."""

from __future__ import annotations

import pytest
import torch

from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.models import CLAMP
from clamp_pl.models.clamp import no_weight_decay
from clamp_pl.spec import make_spec
from clamp_pl.training.module import PoseLitModule
from clamp_pl.training.optim import adamw, fused_supported, param_groups, skip_if_nonfinite

NET = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3, deconv_channels=32,
           upconv_num_deconv=3, upconv_channels=16)
PROMPTS = ["left eye", "right eye", "nose", "left paw", "right paw"]
OPT = {"lr": 1e-3, "weight_decay": 0.05, "backbone_lr_mult": 0.1, "fused": "auto"}
SCHED = {"warmup_iters": 10, "warmup_ratio": 0.001, "milestones": [5], "gamma": 0.1}


def _reference_groups(net, lr, wd, mult, keys=None):
    """The grouping PoseLitModule.configure_optimizers wrote out inline, kept verbatim as the reference."""
    groups = {}
    for group, named in net.param_groups().items():
        if group == "text":
            continue
        for name, p in named:
            if p.requires_grad:
                groups.setdefault((group, no_weight_decay(name, p, keys)), []).append(p)
    return [
        {"params": params, "lr": lr * (mult if group == "backbone" else 1.0), "weight_decay": 0.0 if no_wd else wd,
         "name": f"{group}{'_no_wd' if no_wd else ''}"}
        for (group, no_wd), params in sorted(groups.items())
    ]


def _summary(groups):
    return [(g["name"], g["lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in groups]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CLAMP(prompts=PROMPTS, heatmap_size=(32, 32), **NET)


@pytest.mark.parametrize("keys", [None, ["norm"], ["bias", "norm"]])
def test_groups_equal_the_former_inline_groups(net, keys):
    ours = param_groups(net, lr=2e-3, weight_decay=1e-4, backbone_lr_mult=0.1, no_decay_keys=keys)
    assert _summary(ours) == _summary(_reference_groups(net, 2e-3, 1e-4, 0.1, keys))
    names = [g["name"] for g in ours]
    # clamp-tiny-rn names its norms bn*: the official ["norm"] rule leaves its backbone without a no-decay group
    assert names == (["backbone", "head", "head_no_wd"] if keys == ["norm"]
                     else ["backbone", "backbone_no_wd", "head", "head_no_wd"])
    members = [id(p) for g in ours for p in g["params"]]
    assert len(members) == len(set(members))  # each parameter once
    assert set(members) == {id(p) for p in net.parameters() if p.requires_grad}
    assert not set(members) & {id(p) for p in net.prompt_learner.text_tower.parameters()}


def test_module_optimizer_uses_the_groups():
    torch.manual_seed(0)
    meta = DatasetMeta(name="test", keypoint_names=tuple(PROMPTS), prompts=tuple(PROMPTS),
                       flip_indices=(1, 0, 2, 4, 3), sigmas=[0.07] * 5, skeleton=(), upper_body_ids=(),
                       lower_body_ids=(), joint_weights=[1.0] * 5)
    spec = make_spec(NET, meta, normalization="imagenet", padding=1.25, sigma=2.0, decode="default",
                     shift_heatmap=True, flip_test=True)
    module = PoseLitModule(spec=spec, optimizer=OPT, scheduler=SCHED)
    (opt,), _ = module.configure_optimizers()
    expected = _reference_groups(module.net, OPT["lr"], OPT["weight_decay"], OPT["backbone_lr_mult"])
    got = [(g["name"], g["initial_lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in opt.param_groups]
    assert got == _summary(expected)
    assert opt.defaults["fused"]  # auto: floating-point CPU parameters take the fused kernel


def test_adamw_fused_choice_and_errors(net):
    groups = param_groups(net, lr=1e-3, weight_decay=0.0, backbone_lr_mult=1.0)
    assert adamw(groups, fused="auto").defaults["fused"] is True
    assert adamw(groups, fused=False).defaults["fused"] is False
    assert not fused_supported([torch.zeros(2, dtype=torch.int64)]) and not fused_supported([])
    with pytest.raises(ValueError, match="model.optimizer.fused must be auto, true or false, not 'yes'"):
        adamw(groups, fused="yes")
    with pytest.raises(ValueError, match="no trainable parameters"):
        adamw([], fused="auto")


def test_benchmarks_build_the_module_groups(net):
    """The benchmarks take their optimiser from clamp_pl.training.optim, with the configured lr, decay and backbone
    multiplier (the GPU benchmark uses the same builder)."""
    import benchmarks.gpu
    from benchmarks.fixtures import make_optimizer

    cfg = {"optimizer": {"lr": 5e-4, "weight_decay": 1e-4, "backbone_lr_mult": 0.1}}
    opt = make_optimizer(net, cfg, fused=False)
    assert _summary(opt.param_groups) == _summary(_reference_groups(net, 5e-4, 1e-4, 0.1))
    assert opt.defaults["fused"] is False
    assert benchmarks.gpu.make_optimizer is make_optimizer


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("loss_bad", "grad_value", "skipped"),
                         [(False, 1.0, False), (True, 1.0, True), (False, float("inf"), True)])
def test_skip_if_nonfinite(fused, loss_bad, grad_value, skipped):
    """The step is a no-op after a non-finite loss or gradient: fused AdamW through its ``found_inf`` tensor,
    the per-tensor loop by dropped gradients; a finite step updates the weights."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = adamw([{"params": [w], "lr": 0.1, "weight_decay": 0.0}], fused=fused)
    w.grad = torch.full((3,), grad_value)
    bad = skip_if_nonfinite(opt, torch.tensor(loss_bad))
    assert bad.dtype == torch.bool and bad.shape == () and bool(bad) is skipped
    if fused:
        assert opt.found_inf.item() == float(skipped)
    else:
        assert (w.grad is None) is skipped
    opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) is skipped
