"""SLEAP projects (``.slp``) -> COCO keypoint files, through the optional ``sleap-io`` package.

``sleap-io`` brings heavy dependencies (pynwb, h5py, skia-python, ...), so it is an extra:
``pip install -e ".[sleap]"``; without it :func:`slp_to_coco` raises an ImportError naming the extra.

Conversion: one COCO category from the project's (first) skeleton: ``keypoints`` = the node names, ``skeleton`` =
its edges (1-based), and ``symmetries`` = the skeleton's declared left/right symmetries as name pairs (SLEAP's
own flip pairs, which :func:`clamp_pl.data.metainfo.meta_from_coco` takes over the name-derived ones). Every
labelled frame becomes an image (read through its video backend: image sequences, videos or frames embedded in
the ``.slp``) written as ``images/<video>/<frame>.png``; every user-labelled instance (predictions are not
labels) becomes an annotation with ``v = 2`` for visible nodes, ``0, 0, 0`` for the others, and a box from its
visible points (:func:`clamp_pl.formats.dlc.keypoint_box`). The split is made per video exactly as for DeepLabCut
(:func:`clamp_pl.formats.dlc.split_frames`: contiguous end blocks of every video, or whole held-out videos), over
the labelled frames of each video in frame order; ``split.json`` records it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clamp_pl.formats.dlc import CocoBuilder, SplitSettings

__all__ = ["SLEAP_EXTRA_HINT", "import_sleap_io", "slp_to_coco"]

SLEAP_EXTRA_HINT = 'SLEAP files are read with the optional sleap-io package: pip install -e ".[sleap]"'


def import_sleap_io() -> Any:
    """The ``sleap_io`` module, or an ImportError that names the extra to install."""
    try:
        import sleap_io
    except ImportError as err:
        raise ImportError(f"{SLEAP_EXTRA_HINT} (import failed: {err})") from err
    return sleap_io


def _video_name(video: Any, index: int) -> str:
    filename = video.filename
    if isinstance(filename, (list, tuple)):  # an image sequence: name it by its folder
        filename = filename[0] if filename else f"video{index}"
        stem = Path(filename).parent.name or f"video{index}"
    else:
        stem = Path(str(filename)).stem
    return f"{index:02d}_{stem}"


def _write_frame(slp: Path, video: str, lf: Any, dst: Path) -> tuple[int, int]:
    """Write a labelled frame's image to ``dst`` (PNG); returns its ``(W, H)``."""
    try:
        img = np.asarray(lf.image)
    except Exception as err:  # every backend has its own errors; name the frame whatever they are
        raise FileNotFoundError(f"{slp}: frame {lf.frame_idx} of video {video} "
                                f"({lf.video.filename}) cannot be read: {err}") from err
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img[..., ::-1] if img.ndim == 3 else img)  # sleap-io returns RGB
    return img.shape[1], img.shape[0]


def slp_to_coco(
    slp: str | Path,
    out_dir: str | Path,
    *,
    blocks: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
    split: str = "blocks",
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    seed: int = 0,
    margin: float = 0.25,
    min_margin: float = 4.0,
    category_name: str = "animal",
) -> dict[str, Path]:
    """Convert a SLEAP ``.slp`` project to ``out_dir/annotations/{train,val,test}.json`` + ``out_dir/images``.

    Args:
        slp: the ``.slp`` labels file.
        out_dir: output folder (also gets ``split.json``).
        blocks, split, val_fraction, test_fraction, seed: the per-video split, as for
            :func:`clamp_pl.formats.dlc.dlc_to_coco`; videos are named ``<index>_<file stem>``.
        margin, min_margin: box margin around the visible points.
        category_name: COCO category name.

    Returns:
        ``{"train": json, ["val": json,] ["test": json,] "images": folder, "split": split.json}``.
    """
    sio = import_sleap_io()
    slp = Path(slp)
    if not slp.is_file():
        raise FileNotFoundError(f"{slp}: no such SLEAP labels file (.slp)")
    labels = sio.load_slp(str(slp))
    if not labels.skeletons:
        raise ValueError(f"{slp}: the project defines no skeleton")
    if len(labels.skeletons) > 1:
        raise ValueError(f"{slp}: {len(labels.skeletons)} skeletons; one model needs one keypoint layout "
                         "(split the project per skeleton in SLEAP)")
    skeleton = labels.skeletons[0]
    names = list(skeleton.node_names)
    video_names = {id(v): _video_name(v, i) for i, v in enumerate(labels.videos)}

    by_video: dict[str, list[Any]] = {}
    for lf in labels.labeled_frames:
        if lf.user_instances:
            by_video.setdefault(video_names[id(lf.video)], []).append(lf)
    if not by_video:
        raise ValueError(f"{slp}: no user-labelled instances (predictions are not training labels)")
    for frames in by_video.values():
        frames.sort(key=lambda f: f.frame_idx)
    category = {
        "supercategory": "animal", "id": 1, "name": category_name, "keypoints": names,
        "skeleton": [[int(a) + 1, int(b) + 1] for a, b in skeleton.edge_inds],
        "symmetries": [list(pair) for pair in skeleton.symmetry_names],
    }
    settings = SplitSettings(split, val_fraction, test_fraction, seed, blocks)
    coco = CocoBuilder(slp, category, {v: len(f) for v, f in by_video.items()}, settings, margin, min_margin)

    img_root = Path(out_dir) / "images"
    for video, lf, split_name in coco.frames(by_video):
        file_name = f"{video}/{lf.frame_idx:06d}.png"
        size = _write_frame(slp, video, lf, img_root / file_name)
        coords = np.stack([inst.numpy()[:, :2] for inst in lf.user_instances]).astype(np.float64)
        coco.add_frame(split_name, video, file_name, size, coords, frame_idx=int(lf.frame_idx))
    info = {"description": f"SLEAP labels of {slp.name}", "source": str(slp)}
    return coco.write(Path(out_dir), img_root, info)
