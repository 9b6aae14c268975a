"""ONNX export of a trained model: the graph maps normalised images ``images`` float32 [B, 3, H, W] (dynamic
batch) to ``heatmaps`` float32 [B, K, h, w].

The prompt embeddings (text tower + learned context) are computed once at export time and stored as a constant,
so the text tower and the prompt learner are not in the graph; swapping the keypoint vocabulary needs a new
export. Flip test and decoding stay outside the graph: ``<output>.json`` next to the model holds what a consumer
needs (keypoint names, prompts, flip indices, skeleton, sigmas, input and heatmap size, normalisation, box
padding, the decoding rule).

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``); the dynamo exporter
needs ``onnxscript``, which is not a dependency.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clamp_pl.inference.estimator import PoseEstimator

log = logging.getLogger("clamp_pl")

__all__ = ["HeatmapModel", "export_onnx", "onnx_metadata", "verify_onnx"]


class HeatmapModel(nn.Module):
    """The CLAMP network with its text features frozen: ``images [B, 3, H, W] -> heatmaps [B, K, h, w]``.

    ``text_features`` ([K, Dt], a buffer) is the prompt learner's output at construction time; the network
    is called with it, so nothing of the text tower runs (nor is traced).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        text = net.text_features().detach().clone() if net.text_branch else None
        self.register_buffer("text_features", text)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images, text_features=self.text_features)["heatmaps"]


def onnx_metadata(est: PoseEstimator, opset: int) -> dict[str, Any]:
    """What an ONNX consumer needs besides the graph (JSON-serialisable)."""
    meta = est.meta.to_dict()
    w, h = est.input_size
    hw, hh = est.heatmap_size
    return {
        "format": "onnx",
        "opset": opset,
        "inputs": {"images": {"shape": ["batch", 3, h, w], "dtype": "float32",
                              "layout": "NCHW, RGB, (pixel / 255 - mean) / std"}},
        "outputs": {"heatmaps": {"shape": ["batch", len(meta["prompts"]), hh, hw], "dtype": "float32"}},
        "input_size": list(est.input_size),
        "heatmap_size": [hw, hh],
        "normalization": est.spec.normalization,
        "mean": list(est.spec.mean),
        "std": list(est.spec.std),
        "box_padding": est.padding,
        "decode": {
            "method": "dark" if est.codec.unbiased else "argmax_quarter_offset",
            "note": "argmax per map, score = its value, a quarter heatmap pixel towards the higher neighbour, "
                    "times input_size / heatmap_size; then crop -> image: x / W * scale_w + center_x - "
                    "scale_w / 2 (pixel centres at integer coordinates)",
        },
        "flip_test": {
            "default": est.spec.flip_test,
            "rule": "run the mirrored crop too, mirror its heatmaps, reorder their channels by flip_indices, "
                    + ("shift them one heatmap pixel right, " if est.spec.shift_heatmap else "")
                    + "average with the original",
        },
        **{key: meta[key] for key in ("keypoint_names", "flip_indices", "prompts", "skeleton", "sigmas")},
        "species": {str(k): v for k, v in meta["species"].items()},
        "dataset_name": est.spec.data_name,
        "checkpoint": est.checkpoint,
    }


def export_onnx(est: PoseEstimator, output: str | Path, opset: int = 17, batch_size: int = 2) -> Path:
    """Write the ONNX graph of :class:`HeatmapModel` (dynamic batch) and its JSON side-car ``<output>.json``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    wrapper = HeatmapModel(est.net).eval().cpu()
    w, h = est.input_size
    dummy = torch.randn(batch_size, 3, h, w)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad(), warnings.catch_warnings():
        # tracing warnings about python-int shapes: the batch axis is declared dynamic below
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the legacy exporter is chosen on purpose (the dynamo one needs onnxscript)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        # nn.MultiheadAttention's eval fast path is one fused op without an ONNX symbolic
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(output),
                input_names=["images"],
                output_names=["heatmaps"],
                dynamic_axes={"images": {0: "batch"}, "heatmaps": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    output.with_suffix(".json").write_text(json.dumps(onnx_metadata(est, opset), indent=1))
    est.net.to(est.device)
    return output


def verify_onnx(est: PoseEstimator, onnx_path: str | Path, batch_size: int = 3, seed: int = 0) -> float:
    """Max abs difference between the ONNX Runtime and PyTorch heatmaps on random inputs (a batch size other
    than the traced one, which checks the dynamic axis)."""
    import onnxruntime as ort

    w, h = est.input_size
    x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(seed))
    net = HeatmapModel(est.net).eval().cpu()
    with torch.no_grad():
        ref = net(x).numpy()
    est.net.to(est.device)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(["heatmaps"], {"images": x.numpy()})
    return float(np.abs(out - ref).max())
