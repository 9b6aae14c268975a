"""Inference through an ONNX export with onnxruntime (CPU): :class:`OnnxPoseEstimator` has the predict surface of
:class:`clamp_pl.inference.estimator.PoseEstimator` (``predict``, ``predict_crops``, ``vocabulary``, ``crop``,
``spec``, ``meta``, ``input_size``), so the image and video loops (:mod:`clamp_pl.inference.images`,
:mod:`clamp_pl.inference.video`) run on it unchanged; ``python -m clamp_pl.predict backend=onnx`` selects it.

What stays in Python is what the graph leaves out (:mod:`clamp_pl.inference.onnx`): the crop, the flip test (one
session run on the crops and their mirrors together) and the heatmap decoding, the very functions of the PyTorch
path. The graph holds the text features of the trained keypoints only: other keypoint names need the PyTorch
backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.inference.checkpoint import load_checkpoint, resolve_checkpoint
from clamp_pl.inference.estimator import PoseEstimator
from clamp_pl.inference.postprocess import decode_heatmaps, flip_test_heatmaps
from clamp_pl.spec import ModelSpec

log = logging.getLogger(__name__)

__all__ = ["OnnxPoseEstimator", "load_onnx_model"]


class OnnxPoseEstimator(PoseEstimator):
    """A trained model's ONNX export (``images [B, 3, H, W] -> heatmaps [B, K, h, w]``, dynamic batch) with the
    test-time preprocessing and decoding of its spec.

    Args:
        spec: the model spec of the exported network (its input size, normalisation, codec, keypoints).
        onnx_path: the ``.onnx`` file (:func:`clamp_pl.inference.onnx.export_onnx`).
        threads: onnxruntime's intra-op threads (None: its default, one per physical core).
        checkpoint: the checkpoint the export was made from.
        spin: let onnxruntime's idle threads spin-wait for work (its default). Off here: on a host whose cores
            other processes use too, spinning threads take the cores from the threads doing the work (measured
            on 2 shared cores: 1.27x the crops/s with spinning off, at 0.69x the CPU time); on an idle machine it
            saves little either way.

    Raises:
        ValueError: the graph's input or output shape does not match the spec (an export of another model).
    """

    def __init__(self, spec: ModelSpec, onnx_path: str | Path, threads: int | None = None,
                 checkpoint: str | Path = "", spin: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("backend=onnx runs the export with onnxruntime: pip install onnxruntime") from e
        self._set_spec(spec, torch.device("cpu"), checkpoint)
        self.net = None  # no PyTorch network: the session runs the graph
        self.onnx_path = Path(onnx_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        w, h = self.input_size
        hw, hh = self.heatmap_size
        # dims the exporter left symbolic (a string: e.g. the heatmap size of a timm trunk built with a dynamic
        # image size) are not checked
        if not (_dims_match(inp.shape[1:], [3, h, w]) and _dims_match(out.shape[1:], [self.meta.num_keypoints, hh, hw])):
            raise ValueError(f"{self.onnx_path}: graph maps {inp.shape} -> {out.shape}, but the model spec "
                             f"({self.checkpoint or 'given'}) has input [*, 3, {h}, {w}] and "
                             f"{self.meta.num_keypoints} heatmaps of {hh}x{hw}: an export of another model?")
        self._input, self._output = inp.name, out.name

    def vocabulary(self, keypoints: Sequence[str] | None = None) -> DatasetMeta:
        """The trained vocabulary (:attr:`meta`): the graph holds its text features and no others."""
        if keypoints is None or list(keypoints) == list(self.meta.keypoint_names):
            return self.meta
        raise ValueError(f"{self.onnx_path}: an ONNX export predicts the keypoints it was exported with "
                         f"({', '.join(self.meta.keypoint_names)}); for other names use the PyTorch backend "
                         "(backend=torch) or keypoints=null")

    def heatmaps(self, crops: torch.Tensor) -> torch.Tensor:
        """Heatmaps ``[B, K, h, w]`` of normalised crops ``[B, 3, H, W]`` (float32, CPU)."""
        x = np.ascontiguousarray(crops.detach().cpu().numpy(), dtype=np.float32)
        (hm,) = self.session.run([self._output], {self._input: x})
        return torch.from_numpy(hm)

    def predict_crops(
        self, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray, flip_test: bool = True,
        batch_size: int = 16, meta: DatasetMeta | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`PoseEstimator.predict_crops`: keypoints ``[N, K, 2]`` (image px) and scores ``[N, K]``."""
        meta = self.vocabulary(None if meta is None else list(meta.keypoint_names))
        kpts, scores = [], []
        for s in range(0, len(crops), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(crops[s:s + batch_size]))
            hm = flip_test_heatmaps(self.heatmaps, batch, list(meta.flip_indices), flip_test,
                                    self.spec.shift_heatmap)
            k, sc = decode_heatmaps(self.codec, hm, centers[s:s + batch_size], scales[s:s + batch_size])
            kpts.append(k)
            scores.append(sc)
        return np.concatenate(kpts), np.concatenate(scores)

    def score_maps(self, crops: np.ndarray, keypoints: Sequence[str] | None = None) -> np.ndarray | None:
        raise ValueError(f"{self.onnx_path}: the ONNX graph outputs heatmaps only; score maps need the PyTorch "
                         "backend (clamp_pl.api.load_model)")


def _dims_match(dims: Sequence[int | str | None], expected: Sequence[int]) -> bool:
    """ONNX dims against ``expected``: equal length, and every fixed (int) dim equal."""
    return len(dims) == len(expected) and all(not isinstance(d, int) or d == e for d, e in zip(dims, expected))


def _export_is_current(onnx_path: Path, checkpoint: Path) -> bool:
    """The export at ``onnx_path`` was made from ``checkpoint`` (its side-car says so) after the checkpoint was
    last written."""
    sidecar = onnx_path.with_suffix(".json")
    if not (onnx_path.is_file() and sidecar.is_file()):
        return False
    try:
        made_from = json.loads(sidecar.read_text()).get("checkpoint", "")
    except (OSError, ValueError):
        return False
    return (made_from == str(checkpoint) and onnx_path.stat().st_mtime >= checkpoint.stat().st_mtime)


def load_onnx_model(path: str | Path, onnx_path: str | Path, threads: int | None = None) -> OnnxPoseEstimator:
    """An :class:`OnnxPoseEstimator` of a run dir (its best checkpoint), Lightning ``.ckpt`` or model file.

    ``onnx_path``: where the export is; made there (:func:`clamp_pl.inference.onnx.export_onnx`, with its JSON
    side-car) unless an export of this very checkpoint, newer than it, is already there. Nothing is downloaded.
    """
    file = resolve_checkpoint(path, prefer="best")
    if file is None:
        raise FileNotFoundError("load_onnx_model: no checkpoint path given")
    spec, state = load_checkpoint(file)
    onnx_path = Path(onnx_path)
    if not _export_is_current(onnx_path, Path(file)):
        from clamp_pl.inference.onnx import export_onnx

        net = spec.build_network()
        net.load_state_dict(state)
        export_onnx(PoseEstimator(spec, net, device="cpu", checkpoint=file), onnx_path)
        log.info("exported %s to %s", file, onnx_path)
    return OnnxPoseEstimator(spec, onnx_path, threads=threads, checkpoint=file)
