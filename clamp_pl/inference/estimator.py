"""Python API for inference with a trained model: plain torch + numpy + cv2, no Lightning, Hydra or OmegaConf.

>>> from clamp_pl.api import load_model   # the public facade of this module
>>> est = load_model("logs/train/runs/2024-01-01_12-00-00")   # a run dir (best checkpoint), .ckpt or model file
>>> preds = est.predict(["cat.jpg"], boxes=[[[10, 20, 200, 150, 0.9]]])
>>> preds[0][0]["keypoints"].shape                                  # (K, 2) image pixels
(17, 2)
>>> est.predict(["cat.jpg"], keypoints=["nose", "left ear tip"])[0][0]["untrained"]   # names at run time
('left ear tip',)

Everything comes from the checkpoint's model spec (:class:`clamp_pl.spec.ModelSpec`): the plain
:class:`clamp_pl.models.CLAMP` network, its heatmap codec and the test-time preprocessing. Top-down, with the very
crop function of the test-time data pipeline (:func:`clamp_pl.core.preprocess.crop_and_normalize`): each box (xywh,
image pixels) becomes a centre and a scale (aspect ratio fixed to the network input, the spec's padding), ONE
bilinear ``cv2.warpAffine`` cuts the crop, which is normalised with the spec's mean/std; heatmaps (optionally
flip-tested) are decoded by the spec's codec and mapped back to image pixels (pixel centres at integer
coordinates).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from clamp_pl.core.preprocess import crop_and_normalize
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.inference.checkpoint import load_checkpoint, resolve_checkpoint
from clamp_pl.inference.postprocess import RESCORE_THR, decode_heatmaps, flip_test_heatmaps, rescore
from clamp_pl.models import CLAMP
from clamp_pl.spec import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "PoseEstimator",
    "coco_result",
    "load_model",
    "nearest_context_tokens",
    "read_image",
]

#: file suffixes treated as images (lower case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

ImageLike = str | Path | np.ndarray
Box = Sequence[float] | Mapping[str, Any]


class ImageReadError(ValueError):
    """An image file that does not exist or cannot be decoded; the message names the file."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 ``[H, W, 3]`` (EXIF orientation applied, as in training)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageReadError(f"{path}: cannot decode image (corrupt, truncated or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _as_rgb(image: ImageLike, index: int) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return read_image(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image {index}: expected an RGB uint8 array [H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def _parse_box(box: Box, where: str) -> tuple[np.ndarray, float, int | None]:
    """One box -> (xywh float64 (4,), score, category id or None).

    Accepted: ``[x, y, w, h]``, ``[x, y, w, h, score]``, ``[x, y, w, h, score, category_id]`` or a COCO
    detection ``{"bbox": [x, y, w, h], "score": s, "category_id": c}`` (score and category optional).
    """
    if isinstance(box, Mapping):
        if "bbox" not in box:
            raise ValueError(f"{where}: a box dict needs a 'bbox' [x, y, w, h], got keys {sorted(box)}")
        xywh = np.asarray(box["bbox"], dtype=np.float64)
        score = float(box.get("score", 1.0))
        cat = box.get("category_id")
    else:
        vals = np.asarray(box, dtype=np.float64).ravel()
        if vals.size not in (4, 5, 6):
            raise ValueError(f"{where}: a box is [x, y, w, h(, score(, category_id))], got {vals.size} values")
        xywh = vals[:4]
        score = float(vals[4]) if vals.size > 4 else 1.0
        cat = int(vals[5]) if vals.size > 5 else None
    if xywh.shape != (4,) or not np.isfinite(xywh).all() or xywh[2] <= 0 or xywh[3] <= 0:
        raise ValueError(f"{where}: invalid box {xywh.tolist()} (need finite x, y, w, h with w, h > 0)")
    return xywh, score, None if cat is None else int(cat)


class PoseEstimator:
    """A trained CLAMP network in eval mode with its codec and test-time preprocessing, all from its spec.

    Args:
        spec: the model spec.
        net: the network of the spec with its trained weights (:meth:`ModelSpec.build_network` + load).
        device: None = CUDA when available, else CPU.
        checkpoint: the file it was loaded from.

    Attributes:
        spec, net (:class:`clamp_pl.models.CLAMP`, eval mode, on ``device``), codec (the spec's
            :class:`clamp_pl.codecs.MSRAHeatmap`).
        meta: the :class:`clamp_pl.data.metainfo.DatasetMeta` of the trained vocabulary (what ``predict``
            returns with ``keypoints=None``); :meth:`vocabulary` gives it for other names.
        input_size: network input (W, H). heatmap_size: (w, h). checkpoint: the file it was loaded from.
    """

    def __init__(self, spec: ModelSpec, net: CLAMP, device: str | torch.device | None = None,
                 checkpoint: str | Path = "") -> None:
        self._set_spec(spec, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), checkpoint)
        self.net = net.to(self.device).eval()
        # per asked vocabulary (its prompts): the text features [K, Dt] it runs with
        self._text_features: dict[tuple[str, ...], torch.Tensor] = {}

    def _set_spec(self, spec: ModelSpec, device: torch.device, checkpoint: str | Path) -> None:
        """What the spec decides for any backend: preprocessing, codec, keypoint meta."""
        self.device = device
        self.spec = spec
        self.codec = spec.build_codec()
        self.input_size = spec.input_size
        self.padding = spec.padding
        self.heatmap_size = spec.heatmap_size
        self.checkpoint = str(checkpoint)
        self.meta: DatasetMeta = spec.dataset_meta()

    @property
    def num_keypoints(self) -> int:
        """K of the trained vocabulary."""
        return self.meta.num_keypoints

    def vocabulary(self, keypoints: Sequence[str] | None = None) -> DatasetMeta:
        """The keypoint meta of the names ``keypoints`` (None: the trained vocabulary, :attr:`meta`): prompts,
        flip pairs and OKS sigmas as :meth:`clamp_pl.spec.ModelSpec.vocabulary` derives them. A concat-head model
        (CLAMP's) asked for another number of keypoints raises the network's ValueError, which names the head and
        the way out."""
        if keypoints is None:
            return self.meta
        meta = self.spec.vocabulary(keypoints)
        if self.net.prompts is None and meta.num_keypoints != self.meta.num_keypoints:
            raise ValueError(f"the image-only baseline (no text branch) predicts exactly its {self.meta.num_keypoints} "
                             f"trained keypoints, got {meta.num_keypoints} names")
        self._features_for(meta)  # CLAMP.set_prompts refuses another count for the concat head, saying why
        return meta

    def _features_for(self, meta: DatasetMeta) -> torch.Tensor | None:
        """The text features ``[K, Dt]`` of ``meta``'s prompts (None: the network's own prompts). Computed once per
        vocabulary with the network's prompts swapped, which are put back at once: the network is left as built."""
        prompts = tuple(meta.prompts)
        if self.net.prompts is None or list(prompts) == self.net.prompts:
            return None
        if prompts not in self._text_features:
            own = self.net.prompts
            try:
                self.net.set_prompts(list(prompts))
                self._text_features[prompts] = self.net.text_features().detach().clone()
            finally:
                self.net.set_prompts(own)
        return self._text_features[prompts]

    def crop(self, image: np.ndarray, bbox: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut and normalise the crop of one box.

        Args:
            image: RGB uint8 ``[H, W, 3]``.
            bbox: ``[x, y, w, h]`` in image pixels.

        Returns:
            crop float32 ``[3, H_in, W_in]`` (normalised RGB), center ``[2]`` and scale ``[2]`` (image pixels).
        """
        return crop_and_normalize(image, bbox, self.input_size, self.spec.mean, self.spec.std, self.padding)

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike] | ImageLike,
        boxes: Sequence[Sequence[Box] | None] | None = None,
        keypoints: Sequence[str] | None = None,
        flip_test: bool = True,
        batch_size: int = 16,
    ) -> list[list[dict[str, Any]]]:
        """Keypoints for every box of every image.

        Args:
            images: image paths or RGB uint8 arrays ``[H, W, 3]`` (one path/array is accepted as a list of one).
            boxes: per image, a list of boxes (see :func:`_parse_box`: ``[x, y, w, h(, score(, category_id))]``
                or COCO detection dicts); None (for all images or one image) = one whole-image box
                ``[0, 0, W, H]`` with score 1; an empty list = no instance.
            keypoints: the keypoint names to predict, in this order (None: the trained vocabulary). Any names for
                a prompt-head model (:meth:`vocabulary` derives their prompts and flip pairs); a concat-head model
                takes only as many as it was trained on.
            flip_test: average with the horizontally flipped crop (flip-back with left/right swap).
            batch_size: crops per forward pass (a flip-tested batch runs 2x as many).

        Returns:
            Per image, a list of instances ``{"bbox": [x, y, w, h], "keypoints": float32 [K, 2] (image px),
            "scores": float32 [K] (heatmap maxima), "score": box score x mean(keypoint scores > 0.2),
            "box_score": float, "category_id": int | None, "names": the K keypoint names, "untrained": the names
            among them the model was never trained on}``.
        """
        meta = self.vocabulary(keypoints)
        untrained = self.spec.untrained(keypoints)
        if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
            boxes = None if boxes is None else [boxes]  # type: ignore[list-item]
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"boxes: expected one entry per image ({len(images)}), got {len(boxes)}")
        crops, centers, scales, owners, box_info = [], [], [], [], []
        for i, image in enumerate(images):
            rgb = _as_rgb(image, i)
            img_boxes = None if boxes is None else boxes[i]
            if img_boxes is None:
                img_boxes = [[0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])]]
            for j, box in enumerate(img_boxes):
                xywh, score, cat = _parse_box(box, f"image {i}, box {j}")
                crop, center, scale = self.crop(rgb, xywh)
                crops.append(crop)
                centers.append(center)
                scales.append(scale)
                owners.append(i)
                box_info.append((xywh, score, cat))
        out: list[list[dict[str, Any]]] = [[] for _ in images]
        if not crops:
            return out
        kpts, kpt_scores = self.predict_crops(np.stack(crops), np.stack(centers), np.stack(scales), flip_test,
                                              batch_size, meta)
        inst_scores = rescore(kpt_scores, np.array([b[1] for b in box_info]), RESCORE_THR)
        for n, owner in enumerate(owners):
            xywh, box_score, cat = box_info[n]
            out[owner].append({
                "bbox": [float(v) for v in xywh],
                "keypoints": kpts[n].astype(np.float32),
                "scores": kpt_scores[n].astype(np.float32),
                "score": float(inst_scores[n]),
                "box_score": box_score,
                "category_id": cat,
                "names": meta.keypoint_names,
                "untrained": untrained,
            })
        return out

    @torch.no_grad()
    def predict_crops(
        self, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray, flip_test: bool = True,
        batch_size: int = 16, meta: DatasetMeta | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised crops ``[N, 3, H, W]`` with their centres/scales ``[N, 2]`` -> keypoints ``[N, K, 2]``
        (image px) and scores ``[N, K]``, for the keypoints of ``meta`` (None: the trained vocabulary)."""
        meta = meta or self.meta
        text = self._features_for(meta)
        kpts, scores = [], []
        for s in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[s:s + batch_size]).to(self.device)
            hm = flip_test_heatmaps(lambda x: self.net(x, text)["heatmaps"], batch, list(meta.flip_indices),
                                    flip_test, self.spec.shift_heatmap)
            k, sc = decode_heatmaps(self.codec, hm, centers[s:s + batch_size], scales[s:s + batch_size])
            kpts.append(k)
            scores.append(sc)
        return np.concatenate(kpts), np.concatenate(scores)

    @torch.no_grad()
    def score_maps(self, crops: np.ndarray, keypoints: Sequence[str] | None = None) -> np.ndarray | None:
        """Cosine score maps ``[N, K, gh, gw]`` (one per prompt of ``keypoints``, None: the trained vocabulary; in
        [-1, 1]) of normalised crops ``[N, 3, H, W]``; None for the image-only baseline."""
        text = self._features_for(self.vocabulary(keypoints))
        out = self.net(torch.from_numpy(np.ascontiguousarray(crops)).to(self.device), text)
        maps = out.get("score_maps")
        return None if maps is None else maps.float().cpu().numpy()


def coco_result(instance: dict[str, Any], image_id: Any, default_category_id: int = 1, **extra: Any) -> dict:
    """One instance of :meth:`PoseEstimator.predict` as a COCO keypoint result: ``image_id``, ``category_id``
    (the box's, else ``default_category_id``), flat ``keypoints`` ``[x, y, score] * K`` (image pixels, 3
    decimals), ``score``, ``bbox`` and the ``extra`` fields."""
    kpts = np.concatenate([instance["keypoints"], instance["scores"][:, None]], axis=1)
    cat = instance["category_id"] if instance["category_id"] is not None else default_category_id
    return {**extra, "image_id": image_id, "category_id": cat,
            "keypoints": [round(float(v), 3) for v in kpts.ravel()], "score": float(instance["score"]),
            "bbox": [round(v, 2) for v in instance["bbox"]]}


def load_model(path: str | Path, device: str | torch.device | None = None) -> PoseEstimator:
    """A ready :class:`PoseEstimator` from a run dir (its best checkpoint that loads), a Lightning ``.ckpt`` or a
    model file (:func:`clamp_pl.inference.checkpoint.save_model_file`). Read with ``weights_only=True``; the network, its
    codec and preprocessing are built from the spec, and nothing is downloaded."""
    file = resolve_checkpoint(path, prefer="best")
    if file is None:
        raise FileNotFoundError("load_model: no checkpoint path given")
    spec, state = load_checkpoint(file)
    net = spec.build_network()
    net.load_state_dict(state)
    log.info("loaded %s (%d keypoints, %dx%d input, %s normalisation)", file, spec.num_keypoints,
             *spec.input_size, spec.normalization)
    return PoseEstimator(spec, net, device=device, checkpoint=file)


def nearest_context_tokens(
    model: PoseEstimator | CLAMP, topk: int = 5, metric: str = "euclidean"
) -> list[list[tuple[str, float]]]:
    """Interpret the learned prompt context (CoOp's ``interpret_prompt``): for each context vector, the ``topk``
    vocabulary tokens whose input embeddings (the text tower's ``token_embedding`` table) are nearest.

    Args:
        metric: ``"euclidean"`` (CoOp; ascending distance) or ``"cosine"`` (descending similarity).

    Returns:
        Per context vector (``n_ctx`` lists), ``(token text, distance or similarity)`` pairs, nearest first.
    """
    from open_clip.tokenizer import SimpleTokenizer

    net = getattr(model, "net", model)  # a PoseEstimator (or anything holding the CLAMP network) or a CLAMP
    learner = net.prompt_learner
    if learner is None:
        raise RuntimeError("the image-only baseline has no learned prompt context")
    ctx = learner.ctx.detach().float().cpu()  # [n_ctx, W]
    table = learner.text_tower.token_embedding.weight.detach().float().cpu()  # [V, W]
    if metric == "euclidean":
        vals, ids = torch.cdist(ctx, table).topk(topk, dim=1, largest=False)
    elif metric == "cosine":
        sim = torch.nn.functional.normalize(ctx, dim=1) @ torch.nn.functional.normalize(table, dim=1).T
        vals, ids = sim.topk(topk, dim=1, largest=True)
    else:
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    tok = SimpleTokenizer()
    return [[(tok.decode([int(i)]).strip(), float(v)) for i, v in zip(row_ids, row_vals)]
            for row_ids, row_vals in zip(ids.tolist(), vals.tolist())]
