"""The real input pipeline feeding a ViT-B/16 step on the GPU: ``TopDownDataset`` (train transform, the configured
augmentation) on AP-10K-sized JPEGs, 8 worker processes, pinned memory, bf16 autocast. Reported: the share of the
step time the GPU step waits for data, and images/s."""

from __future__ import annotations

import math
import time

import torch
from gpu_support import DEVICE, GPU, ON_CPU, autocast, config, report
from torch.utils.data import DataLoader

from benchmarks.fixtures import ap10k_like_set, build_clamp, make_optimizer, train_augment
from clamp_pl.codecs import MSRAHeatmap
from clamp_pl.data.dataset import TopDownDataset
from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.transforms import TopDownTransform
from clamp_pl.formats.coco import load_coco_instances
from clamp_pl.models import CLAMPLoss
from clamp_pl.training.optim import skip_if_nonfinite

pytestmark = GPU
# on the CPU (the suite's own check) the tiny model, 2 workers and small batches keep it to seconds
MODEL, WORKERS, BATCH, STEPS = ("clamp_tiny", 2, 4, 3) if ON_CPU else ("clamp_vitb16", 8, 32, 8)


def test_loader_with_8_workers_and_pinned_memory_feeds_a_vitb16_step(tmp_path, record_property):
    cfg = config(MODEL)
    size = cfg["net"]["image_size"]
    meta = get_meta("ap10k")
    ann, img_dir = ap10k_like_set(tmp_path / "jpegs", n_synthetic=24)
    instances, _, _ = load_coco_instances(ann, img_dir, meta, train=True)
    need = BATCH * (STEPS + 1)
    instances = (instances * (need // len(instances) + 1))[:need]
    net = build_clamp(cfg).to(DEVICE).train()
    gh, gw = net.feature_grid
    dataset = TopDownDataset(instances, TopDownTransform(meta, (size, size), augment=train_augment(meta)),
                             MSRAHeatmap((size, size), tuple(cfg["spec"].heatmap_size)), feature_grid=(gw, gh))
    pinned = DEVICE.type == "cuda"
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS, pin_memory=pinned,
                        drop_last=True, prefetch_factor=4)
    opt = make_optimizer(net, cfg)
    criterion = CLAMPLoss(**cfg["loss"])

    def step(host: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(DEVICE, non_blocking=True) for k, v in host.items()}
        opt.zero_grad(set_to_none=True)
        with autocast("bf16"):
            loss = criterion(net(batch["image"]), batch)["loss"]
        loss.backward()
        skip_if_nonfinite(opt, ~torch.isfinite(loss.detach()))
        opt.step()
        return loss.detach()

    it = iter(loader)
    first = next(it)  # worker start-up and the first step (kernel selection) are not timed
    assert first["image"].is_pinned() is pinned
    losses = [step(first)]
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    sync()
    waited, t0 = 0.0, time.perf_counter()
    for _ in range(STEPS):
        w0 = time.perf_counter()
        host = next(it)
        waited += time.perf_counter() - w0
        losses.append(step(host))
    sync()
    elapsed = time.perf_counter() - t0
    values = [float(v) for v in torch.stack(losses).float().cpu()]
    assert all(math.isfinite(v) for v in values), values
    report(record_property, "loader_data_wait_share", waited / elapsed)
    report(record_property, "loader_fed_images_per_s", STEPS * BATCH / elapsed)
    report(record_property, "loader_setup", f"{MODEL}, {WORKERS} workers, batch {BATCH}, pinned {pinned}")
