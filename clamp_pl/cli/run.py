"""Run bookkeeping shared by the entry points: instantiate callbacks/loggers, the config tree, hyper-parameter
logging, W&B run-id persistence and the task wrapper that always closes W&B. (Checkpoint files and run-dir
resolution: :mod:`clamp_pl.inference.checkpoint`.)"""

from __future__ import annotations

import functools
import json
import logging
import netrc
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("clamp_pl")

WANDB_ID_FILE = "wandb_run_id.txt"


class _NoAdvertisement(logging.Filter):
    """Lightning's "Tip: try installing litlogger / litmodels" lines (its cloud products), printed every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def _quiet_third_party() -> None:
    """Inside a ``warnings.catch_warnings()`` block: drop third-party messages with nothing for a user to act on.

    Lightning 2.6's own pytree helper still builds torch's LeafSpec, which torch 2.14 deprecates: every run
    printed this twice, about Lightning's code. Only that message from that module.
    """
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                            r"pytorch_lightning\.utilities\._pytree")


#: errors a user can fix (a missing file, a bad record, an unreadable image or video, a bad setting): printed as
#: one line by the entry points; ``HYDRA_FULL_ERROR=1`` shows the traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)


def _full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_on_user_error(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Under ``@hydra.main``: a :data:`USER_ERRORS` exception ends the command with its message on one line
    (``error: <message>``) and exit status 1, instead of a stack trace under Hydra's hint;
    ``HYDRA_FULL_ERROR=1`` re-raises it for debugging. Other exceptions are bugs and keep their traceback."""

    @functools.wraps(fn)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return fn(cfg)
        except USER_ERRORS as e:
            if _full_errors():
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapped


def task_wrapper(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Log failures with the run dir, and always close W&B so that the next multirun job opens a new run.

    ``extras.ignore_warnings``: Python warnings are not shown while the task runs (DataLoader workers started
    by it inherit the filter); the filters are restored afterwards, so the next multirun job decides again.
    """

    @functools.wraps(fn)
    def wrapped(cfg: DictConfig) -> Any:
        start = time.time()
        lightning_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
        no_ads = _NoAdvertisement()
        lightning_log.addFilter(no_ads)
        try:
            with warnings.catch_warnings():
                _quiet_third_party()
                if (cfg.get("extras") or {}).get("ignore_warnings"):
                    log.info("extras.ignore_warnings=true: Python warnings are not shown")
                    warnings.simplefilter("ignore")
                return fn(cfg)
        except USER_ERRORS as e:
            if _full_errors():
                log.exception("run failed; output dir: %s", cfg.paths.get("output_dir"))
            else:  # the entry point prints the message itself: one line here too, no traceback
                log.error("run failed (%s); output dir: %s", type(e).__name__, cfg.paths.get("output_dir"))
            raise
        except Exception:
            log.exception("run failed; output dir: %s", cfg.paths.get("output_dir"))
            raise
        finally:
            lightning_log.removeFilter(no_ads)
            log.info("run dir: %s (%.1f s)", cfg.paths.get("output_dir"), time.time() - start)
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except ImportError:  # pragma: no cover - wandb is a dependency
                pass

    return wrapped


def print_config_tree(cfg: DictConfig, save_to: Path | None = None, print_: bool = True) -> None:
    """Print the resolved config as a rich tree (main groups first) and save it to ``config_tree.log``."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    order = ["data", "model", "protocol", "callbacks", "logger", "trainer", "paths", "extras"]
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key))
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    if print_:
        rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as fh:
            rich.print(tree, file=fh)


def instantiate_callbacks(cfg: DictConfig | None, progress_bar: bool = True) -> list[pl.Callback]:
    """Callbacks from ``conf/callbacks``; progress bars are dropped when the trainer disables them (Lightning
    refuses a progress-bar callback with ``enable_progress_bar=false``)."""
    if not cfg:
        return []
    callbacks = [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]
    if not progress_bar:
        from pytorch_lightning.callbacks.progress import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def wandb_has_key() -> bool:
    """An API key is configured (env or ~/.netrc); otherwise W&B runs offline instead of prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc()
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in rc.hosts)


def instantiate_loggers(cfg: DictConfig | None, run_dir: Path, resume_from: Path | None = None) -> list:
    """Loggers from ``conf/logger``. W&B: offline when no key (never blocking), and the run id is written to
    ``run_dir/wandb_run_id.txt`` at start; a resumed run (``resume_from`` = its checkpoint) reuses the id."""
    if not cfg:
        return []
    loggers = []
    for lcfg in cfg.values():
        if not isinstance(lcfg, DictConfig) or "_target_" not in lcfg:
            continue
        if "Wandb" in lcfg._target_:
            run_id = lcfg.get("id") or _resumed_wandb_id(resume_from) or uuid.uuid4().hex[:8]
            offline = bool(lcfg.get("offline")) or not wandb_has_key() or os.environ.get("WANDB_MODE") in (
                "offline", "dryrun")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / WANDB_ID_FILE).write_text(run_id)
            loggers.append(instantiate(lcfg, id=run_id, offline=offline, resume="allow"))
        else:
            loggers.append(instantiate(lcfg))
    return loggers


def _resumed_wandb_id(ckpt: Path | None) -> str | None:
    if ckpt is None:
        return None
    for folder in (ckpt.parent.parent, ckpt.parent):
        f = folder / WANDB_ID_FILE
        if f.is_file():
            return f.read_text().strip()
    return None


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params/total": total, "params/trainable": trainable, "params/frozen": total - trainable}


def flops_of(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (``torch.utils.flop_counter``: matrix products,
    convolutions and attention, forward and backward; element-wise ops are not counted).

    ``fn`` runs with autograd on even under ``torch.no_grad()``: the counter's module tracker hooks every module
    input that requires grad, and a view of a parameter made under no_grad (timm's attention-pool query,
    ``latent.expand``) requires grad without a grad_fn, which the hook rejects. The count is the same."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        fn()
    return counter.get_total_flops()


def count_flops(model: pl.LightningModule) -> dict[str, float]:
    """GFLOPs of the network's forward pass on one crop, as in inference (text features computed beforehand and
    cached; flip test doubles it), by :func:`flops_of`. ``{}`` for a model without ``net.image_tower``."""
    net = getattr(model, "net", None)
    if net is None or not hasattr(net, "image_tower"):
        return {}
    size = net.image_tower.image_size
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            # computed once per evaluation epoch, not per crop: passed in, since flops_of runs with autograd on,
            # where the prompt learner would run the text tower again
            text = net.text_features() if getattr(net, "prompt_learner", None) is not None else None
            flops = flops_of(lambda: net(torch.zeros(1, 3, size, size, device=device), text))
    finally:
        net.train(was_training)
    return {"flops/gflops_per_crop": flops / 1e9}


def log_hyperparameters(cfg: DictConfig, model: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """Send the resolved config, the parameter counts and the forward GFLOPs per crop to every logger."""
    hp: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hp.pop("hydra", None)
    hp.update(count_parameters(model))
    hp.update(count_flops(model))
    for lg in trainer.loggers:
        lg.log_hyperparams(hp)
    return hp


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float))
