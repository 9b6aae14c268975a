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

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"

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


# ---------------------------------------------------------------- Hydra configs for CPU tests
FAST_OVERRIDES = [
    "trainer=cpu",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.pin_memory=false",
    "data.n_train=96",
    "data.n_val=24",
    "data.n_test=24",
    "data.batch_size=8",
    "extras.print_config=false",
    "~callbacks.rich_progress_bar",
    "~callbacks.rich_model_summary",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def compose_cfg(config_name: str, overrides, output_dir: Path, data_dir: Path):
    """Compose conf/<config_name>.yaml as the CLI would, with the run dir at ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from clamp_pl.utils.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.data_dir = str(data_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data dir for the session: the small toy set is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """``make_cfg(*overrides, config_name="train", fast=True)`` -> a composed config running in tmp_path."""

    def factory(*overrides: str, config_name: str = "train", fast: bool = True):
        extra = [o for o in FAST_OVERRIDES if config_name == "train" or "callbacks" not in o] if fast else []
        return compose_cfg(config_name, [*extra, *overrides], tmp_path / "run", data_dir)

    yield factory
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
