"""Python API for inference with a trained checkpoint, without Lightning's Trainer.

>>> from clamp_pl.api import load_model
>>> est = load_model("logs/train/runs/2024-01-01_12-00-00")      # a run dir (best checkpoint) or a .ckpt
>>> preds = est.predict(["cat.jpg"], boxes=[[[10, 20, 200, 150, 0.9]]])
>>> preds[0][0]["keypoints"].shape                                  # (K, 2) image pixels
(17, 2)

Top-down, exactly as the test-time data pipeline: each box (xywh, image pixels) becomes a centre and a scale
(aspect ratio fixed to the network input, padding 1.25), ONE bilinear ``cv2.warpAffine`` cuts the crop, which is
normalised as in training; heatmaps (optionally flip-tested) are decoded by the checkpoint's codec and mapped back
to image pixels (pixel centres at integer coordinates).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from clamp_pl.data.transforms import NORMALIZATION, bbox_xywh_to_center_scale, get_warp_matrix
from clamp_pl.evaluation import rescore
from clamp_pl.pose_module import PoseLitModule
from clamp_pl.utils.run import resolve_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "PoseEstimator",
    "coco_result",
    "load_model",
    "nearest_context_tokens",
    "read_image",
    "run_normalization",
]

#: file suffixes treated as images (lower case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: keypoint scores strictly above this enter the instance score (mmpose ``bbox_keypoint`` rescoring)
RESCORE_THR = 0.2

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


def run_normalization(ckpt: str | Path) -> str | None:
    """The ``data.normalization`` of the run a checkpoint belongs to (its ``.hydra/config.yaml``), or None."""
    from omegaconf import OmegaConf

    ckpt = Path(ckpt)
    for folder in (ckpt.parent.parent, ckpt.parent):
        cfg_file = folder / ".hydra" / "config.yaml"
        if cfg_file.is_file():
            try:
                value = OmegaConf.load(cfg_file).get("data", {}).get("normalization")
            except Exception as e:  # an unreadable config only loses the hint
                log.warning("could not read %s: %s", cfg_file, e)
                return None
            return str(value) if value in NORMALIZATION else None
    return None


class PoseEstimator:
    """A trained :class:`PoseLitModule` in eval mode plus the test-time preprocessing.

    Attributes:
        model: the LightningModule (eval mode, on ``device``).
        meta: dataset meta from the checkpoint: ``keypoint_names``, ``prompts``, ``flip_indices``, ``sigmas``,
            ``skeleton`` (0-based pairs), ``species`` (category id -> name), ``families``, ``dataset_name``,
            ``input_size`` (W, H), ``heatmap_size`` (w, h), ``normalization``, ``padding``.
        input_size: network input (W, H).
    """

    def __init__(
        self,
        model: PoseLitModule,
        normalization: str | tuple[Sequence[float], Sequence[float]] = "imagenet",
        padding: float = 1.25,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if isinstance(normalization, str):
            if normalization not in NORMALIZATION:
                raise ValueError(f"normalization must be one of {sorted(NORMALIZATION)} or (mean, std), "
                                 f"got {normalization!r}")
            mean, std = NORMALIZATION[normalization]
        else:
            mean, std = normalization
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        # (x / 255 - mean) / std == x * a - b, the exact float32 arithmetic of TopDownTransform
        self._norm_a = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._norm_b = (self.mean / self.std).astype(np.float32)
        self.padding = float(padding)
        self.input_size = (int(model.image_size), int(model.image_size))
        hp = model.hparams
        self.meta: dict[str, Any] = {
            "dataset_name": hp.get("dataset_name", ""),
            "keypoint_names": list(hp.get("keypoint_names") or []),
            "prompts": list(hp.prompts),
            "flip_indices": [int(i) for i in hp.flip_indices],
            "sigmas": [float(s) for s in hp.sigmas],
            "skeleton": [(int(a), int(b)) for a, b in (hp.get("skeleton") or [])],
            "species": {int(k): str(v) for k, v in (hp.get("species") or {}).items()},
            "families": {str(k): list(v) for k, v in (hp.get("families") or {}).items()},
            "input_size": self.input_size,
            "heatmap_size": tuple(int(v) for v in hp.heatmap_size),
            "normalization": normalization if isinstance(normalization, str) else "custom",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "padding": self.padding,
        }

    @property
    def num_keypoints(self) -> int:
        return len(self.meta["prompts"])

    def crop(self, image: np.ndarray, bbox: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut and normalise the crop of one box.

        Args:
            image: RGB uint8 ``[H, W, 3]``.
            bbox: ``[x, y, w, h]`` in image pixels.

        Returns:
            crop float32 ``[3, H_in, W_in]`` (normalised RGB), center ``[2]`` and scale ``[2]`` (image pixels).
        """
        w_in, h_in = self.input_size
        center, scale = bbox_xywh_to_center_scale(np.asarray(bbox[:4]), w_in / h_in, self.padding)
        mat = get_warp_matrix(center, scale, 0.0, self.input_size)
        patch = cv2.warpAffine(image, mat, self.input_size, flags=cv2.INTER_LINEAR)
        patch = patch.astype(np.float32) * self._norm_a - self._norm_b
        return np.ascontiguousarray(patch.transpose(2, 0, 1)), center, scale

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike] | ImageLike,
        boxes: Sequence[Sequence[Box] | None] | None = None,
        flip_test: bool = True,
        batch_size: int = 16,
    ) -> list[list[dict[str, Any]]]:
        """Keypoints for every box of every image.

        Args:
            images: image paths or RGB uint8 arrays ``[H, W, 3]`` (one path/array is accepted as a list of one).
            boxes: per image, a list of boxes (see :func:`_parse_box`: ``[x, y, w, h(, score(, category_id))]``
                or COCO detection dicts); None (for all images or one image) = one whole-image box
                ``[0, 0, W, H]`` with score 1; an empty list = no instance.
            flip_test: average with the horizontally flipped crop (flip-back with left/right swap).
            batch_size: crops per forward pass (a flip-tested batch runs 2x as many).

        Returns:
            Per image, a list of instances ``{"bbox": [x, y, w, h], "keypoints": float32 [K, 2] (image px),
            "scores": float32 [K] (heatmap maxima), "score": box score x mean(keypoint scores > 0.2),
            "box_score": float, "category_id": int | None}``.
        """
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
                                              batch_size)
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
            })
        return out

    @torch.no_grad()
    def predict_crops(
        self, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray, flip_test: bool = True,
        batch_size: int = 16,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised crops ``[N, 3, H, W]`` with their centres/scales ``[N, 2]`` -> keypoints ``[N, K, 2]``
        (image px) and scores ``[N, K]``."""
        kpts, scores = [], []
        for s in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[s:s + batch_size]).to(self.device)
            hm = self.model.predict_heatmaps(batch, flip_test=flip_test)
            k, sc = self.model.decode(hm, torch.from_numpy(centers[s:s + batch_size]),
                                      torch.from_numpy(scales[s:s + batch_size]))
            kpts.append(k)
            scores.append(sc)
        return np.concatenate(kpts), np.concatenate(scores)

    @torch.no_grad()
    def score_maps(self, crops: np.ndarray) -> np.ndarray | None:
        """Cosine score maps ``[N, K, gh, gw]`` (one per prompt, in [-1, 1]) of normalised crops ``[N, 3, H, W]``;
        None for the image-only baseline."""
        out = self.model(torch.from_numpy(np.ascontiguousarray(crops)).to(self.device))
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


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    normalization: str | tuple[Sequence[float], Sequence[float]] | None = None,
    padding: float = 1.25,
) -> PoseEstimator:
    """A ready :class:`PoseEstimator` from a run dir (its best checkpoint) or a ``.ckpt`` file.

    The checkpoint is loaded with ``weights_only=True`` (its hyper-parameters are primitives). ``normalization``
    None = the run's ``data.normalization`` when its ``.hydra/config.yaml`` is found, else ImageNet (CLAMP).
    """
    ckpt = resolve_checkpoint(path, prefer="best")
    if ckpt is None:
        raise FileNotFoundError("load_model: no checkpoint path given")
    model = PoseLitModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    if normalization is None:
        normalization = run_normalization(ckpt) or "imagenet"
    log.info("loaded %s (%d keypoints, %s normalisation)", ckpt, len(model.hparams.prompts), normalization)
    est = PoseEstimator(model, normalization=normalization, padding=padding, device=device)
    est.meta["checkpoint"] = str(ckpt)
    return est


def nearest_context_tokens(
    model: PoseLitModule | PoseEstimator, topk: int = 5, metric: str = "euclidean"
) -> list[list[tuple[str, float]]]:
    """Interpret the learned prompt context (CoOp's ``interpret_prompt``): for each context vector, the ``topk``
    vocabulary tokens whose input embeddings (the text tower's ``token_embedding`` table) are nearest.

    Args:
        metric: ``"euclidean"`` (CoOp; ascending distance) or ``"cosine"`` (descending similarity).

    Returns:
        Per context vector (``n_ctx`` lists), ``(token text, distance or similarity)`` pairs, nearest first.
    """
    from open_clip.tokenizer import SimpleTokenizer

    net = (model.model if isinstance(model, PoseEstimator) else model).net
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
