"""Shared fixtures. The whole suite runs offline: a socket guard refuses every connection that is not to this
machine, and HF_HUB_OFFLINE / WANDB_MODE are set before anything imports open_clip or wandb."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")
if "OMP_WAIT_POLICY" not in os.environ:  # short OpenMP spin, as the Makefile (read when torch loads libgomp)
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "fixtures"

_real_connect = socket.socket.connect


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise RuntimeError(f"network access blocked in tests (tried to connect to {address!r})")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


def augment_config(**overrides) -> dict:
    """The ``augment`` node of conf/data/_base.yaml (the only defaults of ``TopDownAugment``), with overrides:
    ``TopDownAugment(meta=meta, **augment_config(rot_prob=0.0))``."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "_base.yaml").augment, resolve=True)
    unknown = set(overrides) - set(node)
    if unknown:
        raise KeyError(f"not augmentation settings: {sorted(unknown)} (known: {sorted(node)})")
    return {**node, **overrides}


# ---------------------------------------------------------------- Hydra configs for CPU tests
# debug=tiny (conf/debug/tiny.yaml): small toy set, 3 train / 2 val / 2 test batches, no bars, no workers
FAST_OVERRIDES = ["debug=tiny"]
FAST_EVAL_OVERRIDES = [
    "data.n_train=96", "data.n_val=24", "data.n_test=24", "data.batch_size=8", "data.num_workers=0",
    "data.persistent_workers=false", "data.pin_memory=false", "extras.print_config=false",
    "+trainer.limit_test_batches=2", "+trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
]


def compose_cfg(config_name: str, overrides, output_dir: Path, data_dir: Path):
    """Compose conf/<config_name>.yaml as the CLI would, with the run dir at ``output_dir``."""
    from omegaconf import open_dict

    from clamp_pl.cli.config import compose_config

    cfg = compose_config(config_name, list(overrides), output_dir)
    with open_dict(cfg):
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.data_dir = str(data_dir)
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data dir for the session: the small toy set is generated once."""
    return tmp_path_factory.mktemp("data")


# the tiny training run shared by the inference tests (predict, api, video, export, notebook, run dir)
TINY_RUN_OVERRIDES = [
    "experiment=supervised_toy",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """A run dir of clamp_tiny trained on the toy set for a few batches, once per session, as the CLI leaves
    it (``.hydra/config.yaml`` included)."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from clamp_pl.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = compose_cfg("train", [*FAST_OVERRIDES, *TINY_RUN_OVERRIDES], run_dir, data_dir)
    train(cfg)
    saved = cfg.copy()
    with open_dict(saved):
        del saved["hydra"]
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    GlobalHydra.instance().clear()
    return run_dir


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """``make_cfg(*overrides, config_name="train", fast=True)`` -> a composed config running in tmp_path."""

    def factory(*overrides: str, config_name: str = "train", fast: bool = True):
        extra = (FAST_OVERRIDES if config_name == "train" else FAST_EVAL_OVERRIDES) if fast else []
        return compose_cfg(config_name, [*extra, *overrides], tmp_path / "run", data_dir)

    yield factory
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(config, items):
    """Everything in tests/integration trains, sweeps or spawns processes end to end: marked ``e2e``
    (``make test-e2e``), outside the fast suite (``make test``)."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.e2e)
