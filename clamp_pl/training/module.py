"""``PoseLitModule``: the CLAMP network, its losses, flip test, decoding and metrics as a LightningModule.

It is built from a :class:`clamp_pl.spec.ModelSpec` (network, codec, keypoint meta) plus the training-only
arguments (losses, optimiser, schedule). The spec is saved once, as the ``spec`` hyper-parameter of every
checkpoint (``checkpoint["hyper_parameters"]["spec"]``), as primitives: checkpoints load with
``torch.load(..., weights_only=True)``, and :func:`clamp_pl.inference.checkpoint.load_checkpoint` reads them without
Lightning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from clamp_pl.data.datamodule import EvalSet
from clamp_pl.evaluation.metric import KEYPOINT_PCK_THR, CocoKeypointAP
from clamp_pl.formats.coco import write_results
from clamp_pl.inference.checkpoint import load_checkpoint, resolve_checkpoint
from clamp_pl.inference.postprocess import decode_heatmaps, flip_test_heatmaps
from clamp_pl.models import CLAMPLoss
from clamp_pl.spec import ModelSpec
from clamp_pl.training.optim import adamw, param_groups, skip_if_nonfinite

log = logging.getLogger(__name__)


class PoseLitModule(pl.LightningModule):
    """CLAMP (or the image-only baseline) trained with heatmap, spatial and feature losses.

    Args:
        spec: the model spec (or its ``to_dict()``): network arguments, codec, preprocessing, keypoint meta.
        loss: ``CLAMPLoss`` weights. optimizer: lr, weight_decay, backbone_lr_mult, fused ("auto" | true |
            false; auto: PyTorch's fused AdamW kernel whenever the parameters allow it), optional no_decay_keys.
        scheduler: warmup_iters, warmup_ratio, milestones (epochs), gamma. ``optimizer`` and ``scheduler`` are
            only needed to train (``configure_optimizers``); their values live in ``conf/model``.
        nonfinite: what to do with a non-finite loss or gradient: "skip" the optimiser step (counted; no host
            sync with a fused optimiser), "stop" (skip it, then the RunSafetyCallback saves a checkpoint and stops
            with a message) or "off" (no check).
        load_pretrained: load the spec's ``net.pretrained`` CLIP weights (to start training); off (the default,
            e.g. in ``load_from_checkpoint``), the towers are left random for a checkpoint's weights to fill and
            nothing is read or downloaded. Not a hyper-parameter.

    Attributes: ``spec``, ``net`` (:class:`clamp_pl.models.CLAMP`), ``codec`` (the spec's heatmap codec: the
    datamodule makes its targets with this same object), ``flip_test`` (test-time default, from the spec).
    """

    def __init__(
        self,
        *,
        spec: ModelSpec | Mapping[str, Any],
        loss: dict[str, float] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        nonfinite: str = "skip",
        load_pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
        self.save_hyperparameters({
            "spec": self.spec.to_dict(), "loss": loss, "optimizer": optimizer, "scheduler": scheduler,
            "compile": compile, "channels_last": channels_last, "nonfinite": nonfinite,
        })
        self.net = self.spec.build_network(load_pretrained=load_pretrained)
        self.criterion = CLAMPLoss(**(loss or {}))
        w, h = self.spec.input_size
        # Lightning's model summary runs it once: layer in/out sizes and FLOPs (with the text tower's, once)
        self.example_input_array = torch.zeros(1, 3, h, w)
        self.codec = self.spec.build_codec()
        self.flip_test = self.spec.flip_test
        self.nonfinite = nonfinite
        self.nonfinite_steps = 0
        self.stop_reason: str | None = None
        self._loss_nonfinite: Tensor | None = None  # bool [] : a non-finite loss since the last optimiser step
        self._nonfinite_pending: Tensor | None = None  # long []: skipped steps not yet counted on the host
        self._saved_stats: list[Tensor] | None = None
        self._compiled: torch.nn.Module | None = None
        # split -> the datamodule's evaluation sets (one per dataset of a multi-dataset run) and their metrics
        self.metrics: dict[str, list[tuple[EvalSet, CocoKeypointAP]]] = {}
        # dataset index -> its union channels, when batches mix datasets of different keypoints (the loss looks at
        # each sample's own keypoints only)
        self.dataset_channels: dict[int, Tensor] = {}
        # split -> CocoKeypointAP.analysis() of its last evaluation (per-instance OKS, keypoint confusion,
        # per-keypoint PCK): the test-time pictures of KeypointVisCallback read it
        self.eval_analysis: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "instances", None):
            for split in ("val", "test"):
                self.metrics[split] = []
                for eval_set in dm.eval_sets(split):
                    # a set of all the model's keypoints is scored with the model's meta (as trained)
                    whole = eval_set.name is None and eval_set.channels is None
                    meta = self.spec.dataset_meta() if whole else eval_set.meta
                    self.metrics[split].append((eval_set, CocoKeypointAP(
                        eval_set.gt,
                        meta.sigmas.tolist(),
                        species=meta.species,
                        families=meta.families,
                        flip_pairs=list(meta.flip_pairs),
                    ).to(self.device)))
            sets = self.metrics["val"]
            if len(sets) > 1:
                self.dataset_channels = {s.index: torch.as_tensor(s.channels, device=self.device) for s, _ in sets}
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit" and self._compiled is None:
            # compile a view of the same module: the state dict keeps its plain names
            self._compiled = torch.compile(self.net)

    def forward(self, images: Tensor) -> dict[str, Tensor | None]:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        net = self._compiled if (self._compiled is not None and self.training) else self.net
        return net(images)

    # ---------------------------------------------------------------- training
    def _running_stats(self) -> list[Tensor]:
        """The batch-norm running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``)."""
        names = ("running_mean", "running_var", "num_batches_tracked")
        return [b for n, b in self.net.named_buffers() if n.rsplit(".", 1)[-1] in names]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # Non-finite steps are skipped without a host sync and on every DDP rank alike (returning None would do
        # neither: Lightning refuses it under DDP). The loss flag and the gradients are checked before the
        # optimiser step (``on_before_optimizer_step``); a skipped step puts the batch-norm running statistics
        # back (the NaN forward moved them), so keep a copy from before the step's first forward (a few KB).
        if self.nonfinite != "off":
            if self._saved_stats is None:
                self._saved_stats = [s.clone() for s in self._running_stats()]
            out = self(batch["image"])
            losses = self._losses(out, batch)
            bad = ~torch.isfinite(losses["loss"].detach())
            self._loss_nonfinite = bad if self._loss_nonfinite is None else self._loss_nonfinite | bad
        else:
            out = self(batch["image"])
            losses = self._losses(out, batch)
        loss = losses["loss"]
        bs = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", loss.detach(), batch_size=bs, prog_bar=True)
        if out.get("logit_scale") is not None:
            self.log("train/logit_scale", out["logit_scale"].detach(), batch_size=bs)
        return loss

    def _losses(self, out: dict[str, Tensor | None], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The losses of a batch; a batch that mixes datasets (``batch["dataset"]`` [B]) is scored per dataset on
        its own keypoints: the sum over datasets d of the losses of the channels of d with the weights of the
        other datasets' samples zeroed. The losses are means over all B x K_d entries, so that sum is the
        sample-weighted mean of each dataset's own loss, computed without a host sync."""
        if "dataset" not in batch or not self.dataset_channels:
            return self.criterion(out, batch)
        total: dict[str, Tensor] = {}
        for index, channels in self.dataset_channels.items():
            mine = (batch["dataset"] == index).to(batch["keypoint_weights"].dtype)[:, None]  # [B, 1]
            sub_out = {k: (v[:, channels] if k in ("heatmaps", "spatial_heatmaps", "prompt_embeddings")
                           and v is not None else v) for k, v in out.items()}
            sub_batch = {**batch, "heatmaps": batch["heatmaps"][:, channels],
                         "keypoint_weights": batch["keypoint_weights"][:, channels] * mine,
                         "peak_index": batch["peak_index"][:, channels],
                         "peak_weights": batch["peak_weights"][:, channels] * mine}
            for k, v in self.criterion(sub_out, sub_batch).items():
                total[k] = total[k] + v if k in total else v
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the update when any rank's loss or any (all-reduced) gradient is non-finite.

        A fused optimiser takes the flag as a tensor (``found_inf``, the attribute GradScaler uses): no host
        sync. Any other optimiser needs the flag on the host, and skips parameters whose gradient is None. Under
        a GradScaler (16-bit AMP) the scaler skips steps with non-finite gradients itself.
        """
        if self.nonfinite == "off" or self._loss_nonfinite is None:
            return
        bad = self.trainer.strategy.reduce(self._loss_nonfinite.float(), reduce_op="sum").reshape(()) > 0
        # under a GradScaler, overflowing (scaled) gradients are routine: the scaler skips those steps itself
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            bad = skip_if_nonfinite(optimizer, bad)
        with torch.no_grad():
            for buf, kept in zip(self._running_stats(), self._saved_stats or []):
                buf.copy_(torch.where(bad, kept, buf))
        self._nonfinite_pending = bad.long() if self._nonfinite_pending is None else self._nonfinite_pending + bad
        self._saved_stats = None
        self._loss_nonfinite = None

    def collect_nonfinite(self, log_metric: bool = True) -> int:
        """Bring the count of skipped steps to the host (one sync), log it (``log_metric``: where ``self.log``
        is allowed), and in ``stop`` mode set ``stop_reason``. Called by ``RunSafetyCallback`` every
        ``log_every_n_steps`` (every step with "stop") and at checkpoints, and at the end of each training epoch.
        Returns the steps newly found skipped."""
        if self._nonfinite_pending is None:
            return 0
        new = int(self._nonfinite_pending.sum())
        self._nonfinite_pending = None
        if new:
            self.nonfinite_steps += new
            msg = (
                f"non-finite training loss or gradients in {new} step(s) up to epoch {self.current_epoch}, "
                f"step {self.global_step}"
            )
            if self.nonfinite == "stop":
                self.stop_reason = msg
            else:
                log.warning("%s: skipped (%d so far)", msg, self.nonfinite_steps)
        if log_metric:
            self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        return new

    def on_train_epoch_end(self) -> None:
        self.collect_nonfinite()

    def on_train_end(self) -> None:
        self.collect_nonfinite(log_metric=False)  # a run that stopped mid-epoch (max_steps, a signal)

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_heatmaps(self, images: Tensor, flip_test: bool | None = None) -> Tensor:
        """Heatmaps ``[B, K, h, w]`` for normalised crops ``[B, 3, H, W]``; with flip test the original and the
        mirrored crops run as ONE batch (the text features are computed once and cached in eval)."""
        return flip_test_heatmaps(lambda x: self(x)["heatmaps"], images, self.spec.flip_indices,
                                  self.flip_test if flip_test is None else flip_test, self.spec.shift_heatmap)

    def decode(self, heatmaps: Tensor, center: Tensor, scale: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps ``[B, K, h, w]`` -> keypoints ``[B, K, 2]`` in image pixels and scores ``[B, K]``."""
        return decode_heatmaps(self.codec, heatmaps, center, scale)

    def _eval_step(self, batch: dict[str, Tensor], split: str) -> None:
        hm = self.predict_heatmaps(batch["image"])
        for eval_set, metric in self.metrics.get(split, []):
            # each set scores its own samples on the channels that predict its keypoints
            rows = slice(None) if "dataset" not in batch else (batch["dataset"] == eval_set.index).nonzero()[:, 0]
            if eval_set.channels is None:
                heatmaps = hm[rows]
            else:
                heatmaps = hm[rows][:, list(eval_set.channels)]
            if heatmaps.shape[0] == 0:
                continue
            kpts, scores = self.decode(heatmaps, batch["center"][rows], batch["scale"][rows])
            metric.update(
                batch["ann_id"][rows], batch["image_id"][rows], batch["category_id"][rows], torch.from_numpy(kpts),
                torch.from_numpy(scores), areas=batch["scale"][rows].prod(-1),  # padded crop box, as mmpose's NMS
            )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        """Log each evaluation set's metrics: ``<split>/<metric>`` for a datamodule's only set; for the named sets
        of a multi-dataset datamodule (one per dataset), ``<split>/<metric>/<dataset>`` and the mean over the
        datasets of each metric they all have as ``<split>/<metric>`` (``val/AP``, the checkpoint metric, is the
        mean AP). Test outputs go to
        ``predictions/`` (``predictions/<dataset>/`` per dataset)."""
        sets = self.metrics.get(split)
        if not sets:
            return {}
        logged: dict[str, float] = {}
        per_set: list[dict[str, Any]] = []
        for eval_set, metric in sets:
            values = metric.compute()
            analysis = metric.analysis()
            suffix = "" if eval_set.name is None else f"/{eval_set.name}"
            if eval_set.name is None:
                self.eval_analysis[split] = analysis
            for k, v in values.items():
                logged[f"{split}/{k}{suffix}"] = v
            per_set.append(values)
            if split == "test" and self.trainer.is_global_zero:
                self._write_test_outputs(Path(self.trainer.default_root_dir) / "predictions" / suffix.lstrip("/"),
                                         metric, values, analysis, eval_set, suffix)
            metric.reset()
        if any(eval_set.name is not None for eval_set, _ in sets):
            shared = set.intersection(*(set(v) for v in per_set))
            for k in sorted(shared):
                vals = [v[k] for v in per_set]
                if "/" not in k and all(isinstance(x, (int, float)) and math.isfinite(x) for x in vals):
                    logged[f"{split}/{k}"] = float(np.mean(vals))
        for k, v in logged.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.log(k, float(v), prog_bar=k == f"{split}/AP", sync_dist=False, rank_zero_only=False)
        self.last_metrics = logged
        return logged

    def _write_test_outputs(self, out: Path, metric: CocoKeypointAP, values: dict[str, Any],
                            analysis: dict[str, Any], eval_set: EvalSet, suffix: str) -> None:
        """``test_predictions.json`` (COCO results), ``test_metrics.json``, the per-keypoint PCK and confusion
        tables of one evaluation set in ``out``; the per-species AP table to W&B."""
        out.mkdir(parents=True, exist_ok=True)
        write_results(out / "test_predictions.json", metric.coco_results())
        (out / "test_metrics.json").write_text(json.dumps(values, indent=1))
        whole = eval_set.name is None and eval_set.channels is None
        names = list(self.spec.meta["keypoint_names"]) if whole else list(eval_set.meta.keypoint_names)
        table = analysis.get("keypoint_pck")
        if table:
            (out / "test_keypoint_pck.json").write_text(json.dumps({
                "threshold": KEYPOINT_PCK_THR, "keypoints": names,
                "pck": {k: [None if np.isnan(v) else float(v) for v in row] for k, row in table.items()}},
                indent=1))
        confusion = analysis.get("keypoint_confusion")
        if confusion is not None:
            (out / "test_keypoint_confusion.json").write_text(json.dumps({
                "keypoints": names,
                "rows": "predicted keypoint", "columns": "labelled keypoint nearest to the prediction",
                "counts": confusion.tolist()}, indent=1))
        rows = [[k.split("/", 1)[1], float(v)] for k, v in values.items() if k.startswith("AP_species/")]
        for lg in self.trainer.loggers:
            if rows and hasattr(lg, "log_table"):  # W&B
                lg.log_table(key=f"test/AP_species{suffix}", columns=["species", "AP"], data=rows)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """AdamW (:mod:`clamp_pl.training.optim`) and mmcv's schedule as two chained torch schedulers: a linear
        warm-up from ``warmup_ratio`` to 1 over ``warmup_iters`` optimiser steps (stepped every step), times
        ``gamma`` at each epoch of ``milestones`` (stepped every epoch). Both multiply the lr in place, so
        the lr of step s in epoch e is ``lr x warm-up factor(s) x gamma ** (milestones <= e)``."""
        opt_cfg = self._training_arg("optimizer", ("lr", "weight_decay", "backbone_lr_mult", "fused"))
        groups = param_groups(self.net, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"],
                              backbone_lr_mult=opt_cfg["backbone_lr_mult"], no_decay_keys=opt_cfg.get("no_decay_keys"))
        fused = opt_cfg["fused"]
        if fused == "auto" and self._clips_under_grad_scaler():
            fused = False
        optimizer = adamw(groups, fused=fused)
        sch = self._training_arg("scheduler", ("warmup_iters", "warmup_ratio", "milestones", "gamma"))
        # no warm-up: a constant factor 1 (LinearLR wants a start factor in (0, 1])
        warm = sch["warmup_iters"] > 0
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=sch["warmup_ratio"] if warm else 1.0,
                                                   end_factor=1.0, total_iters=max(sch["warmup_iters"], 1))
        steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(sch["milestones"]),
                                                     gamma=sch["gamma"])
        # unnamed: LearningRateMonitor logs the optimiser's lr as "lr-AdamW/<group>" (read at the step interval)
        return [optimizer], [{"scheduler": warmup, "interval": "step"}, {"scheduler": steps, "interval": "epoch"}]

    def _training_arg(self, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
        """``optimizer`` / ``scheduler`` with every key set (their values live in ``conf/model``, not here)."""
        value = dict(self.hparams.get(name) or {})
        missing = [k for k in keys if k not in value]
        if missing:
            raise ValueError(f"model.{name} must set {list(keys)}; missing {missing} (a module built for "
                             "evaluation has no training arguments)")
        return value

    def _clips_under_grad_scaler(self) -> bool:
        """Whether this run clips gradients under a GradScaler (16-bit AMP), which rules out the fused AdamW
        kernel: it unscales the gradients itself, so Lightning refuses to clip them first."""
        trainer = self._trainer
        if trainer is None or not getattr(trainer, "gradient_clip_val", None):
            return False
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    # ---------------------------------------------------------------- weights-only init
    def load_weights_from(self, path: str | Path) -> Path:
        """Initialise the network from the weights of a run dir (its best checkpoint), a checkpoint or a model
        file (``init_from``): no optimiser, no epoch. The text-token buffers are not in the state dict, so a model
        trained on other keypoint names loads too: the network's prompts are this run's keypoint names, the learned
        context tokens come from the file. With the prompt head (``model.net.head=prompt``) on both sides no
        tensor depends on K and every one loads ("0 skipped"); with CLAMP's concat head the tensors whose shape
        differs (another K) are reported and left as initialised, and a concat head of the same K trained on other
        names is loaded with a warning (its channel k was trained for the starting point's k-th keypoint).
        Returns the file read."""
        file = resolve_checkpoint(path, prefer="best")
        start, state = load_checkpoint(file)
        own = self.net.state_dict()
        loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(state) - set(loadable))
        missing = sorted(set(own) - set(loadable))
        self.net.load_state_dict(loadable, strict=False)
        log.info("init_from %s: %d tensors loaded, %d skipped%s, %d left as initialised", file, len(loadable),
                 len(skipped), f" ({', '.join(skipped[:5])})" if skipped else "", len(missing))
        if start.head != self.spec.head:
            log.warning("init_from %s: the starting point has the %s head and this network the %s head, so the "
                        "keypoint head starts as initialised; model.net.head=%s loads it too", file, start.head,
                        self.spec.head, start.head)
        elif (self.spec.head == "concat" and start.num_keypoints == self.spec.num_keypoints
              and start.trained_vocabulary != self.spec.trained_vocabulary):
            log.warning("init_from %s: the concat head's %d channels were trained for %s, and start here as %s, in "
                        "this order; model.net.head=prompt ties each heatmap to its keypoint's name instead", file,
                        start.num_keypoints, ", ".join(start.trained_vocabulary),
                        ", ".join(self.spec.trained_vocabulary))
        return file
