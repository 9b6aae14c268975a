"""The random states ``RunSafetyCallback`` stores in checkpoints: they load with ``weights_only=True`` and put every
generator back (python, numpy, torch CPU, and the CUDA generators of each device, mocked here: no GPU needed)."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch

from clamp_pl.training.callbacks import safety


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_cpu_states_resume_the_same_draws():
    state = _roundtrip(safety._rng_state())
    if not torch.cuda.is_initialized():
        assert "cuda" not in state  # never initialises CUDA just to read it
    first = _draws()
    safety._set_rng_state(state)
    assert _draws() == first


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two CUDA devices whose generator states are plain byte tensors; records what is set."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    return states, restored, monkeypatch


def test_cuda_states_are_saved_and_restored_per_device(fake_cuda):
    states, restored, _ = fake_cuda
    state = _roundtrip(safety._rng_state())
    assert [t.tolist() for t in state["cuda"]] == [t.tolist() for t in states]
    safety._set_rng_state(state)
    assert len(restored) == 1 and [t.tolist() for t in restored[0]] == [t.tolist() for t in states]


def test_cuda_states_of_another_device_count_are_not_applied(fake_cuda, caplog):
    _, restored, monkeypatch = fake_cuda
    state = _roundtrip(safety._rng_state())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with caplog.at_level(logging.WARNING, logger=safety.__name__):
        safety._set_rng_state(state)
    assert restored == []
    assert "CUDA random state of 2 device(s), this process sees 1" in caplog.text


def test_cuda_not_initialised_is_not_saved(fake_cuda):
    _, _, monkeypatch = fake_cuda
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in safety._rng_state()
