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

A ``.slp`` that sleap-io cannot read (truncated, not HDF5, a format newer than it reads) is a
:class:`~clamp_pl.core.errors.DataError` naming the file and what sleap-io reported. A user instance whose every
node is missing is not an annotation: it is dropped, counted in the log and listed under ``skipped`` in
``split.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clamp_pl.core.errors import DataError
from clamp_pl.formats.dlc import ON_ERROR, CocoBuilder, SplitSettings

__all__ = ["SLEAP_EXTRA_HINT", "import_sleap_io", "slp_to_coco"]

log = logging.getLogger(__name__)

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


def _load(sio: Any, slp: Path) -> Any:
    """``sio.load_slp``, its failures (a truncated or non-HDF5 file, a format newer than sleap-io reads) turned
    into a :class:`DataError` naming the file and what sleap-io reported."""
    try:
        return sio.load_slp(str(slp))
    except Exception as err:  # h5py, sleap-io and numpy each raise their own; name the file whatever they are
        raise DataError(f"{slp}: sleap-io {getattr(sio, '__version__', '')} cannot read this .slp file "
                        f"({type(err).__name__}: {err}); re-save it from SLEAP, or update sleap-io if SLEAP is "
                        "newer") from err


def _labelled(slp: Path, video: str, lf: Any) -> tuple[np.ndarray, list[dict[str, str]]]:
    """The user instances of a frame as coords (I, K, 2) image pixels, NaN = missing node, without those whose
    every node is missing (nothing to train on or to box), which are returned as skip records."""
    coords = [inst.numpy()[:, :2].astype(np.float64) for inst in lf.user_instances]
    empty = [i for i, c in enumerate(coords) if np.isnan(c).all()]
    skipped = [{"file": str(slp), "record": f"frame {lf.frame_idx} of video {video}", "column": f"instance {i}",
                "reason": "every node is missing"} for i in empty]
    kept = [c for i, c in enumerate(coords) if i not in empty]
    k = len(lf.user_instances[0].skeleton.nodes)
    return (np.stack(kept) if kept else np.zeros((0, k, 2))), skipped


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
    on_error: str = "raise",
) -> dict[str, Path]:
    """Convert a SLEAP ``.slp`` project to ``out_dir/annotations/{train,val,test}.json`` + ``out_dir/images``.

    Args:
        slp: the ``.slp`` labels file.
        out_dir: output folder (also gets ``split.json``).
        blocks, split, val_fraction, test_fraction, seed: the per-video split, as for
            :func:`clamp_pl.formats.dlc.dlc_to_coco`; videos are named ``<index>_<file stem>``.
        margin, min_margin: box margin around the visible points.
        category_name: COCO category name.
        on_error: ``"raise"``: a frame whose image cannot be read stops the conversion; ``"skip"``: it is dropped
            and listed under ``skipped`` in ``split.json``. User instances whose every node is missing are no
            labels: always dropped, counted in the log and listed there.

    Returns:
        ``{"train": json, ["val": json,] ["test": json,] "images": folder, "split": split.json}``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    sio = import_sleap_io()
    slp = Path(slp)
    if not slp.is_file():
        raise FileNotFoundError(f"{slp}: no such SLEAP labels file (.slp)")
    labels = _load(sio, slp)
    if not labels.skeletons:
        raise DataError(f"{slp}: the project defines no skeleton")
    if len(labels.skeletons) > 1:
        raise DataError(f"{slp}: {len(labels.skeletons)} skeletons; one model needs one keypoint layout "
                        "(split the project per skeleton in SLEAP)")
    skeleton = labels.skeletons[0]
    names = list(skeleton.node_names)
    video_names = {id(v): _video_name(v, i) for i, v in enumerate(labels.videos)}

    by_video: dict[str, list[Any]] = {}
    for lf in labels.labeled_frames:
        if lf.user_instances:
            by_video.setdefault(video_names[id(lf.video)], []).append(lf)
    if not by_video:
        raise DataError(f"{slp}: no user-labelled instances (predictions are not training labels)")
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
    skipped: list[dict[str, str]] = []
    for video, lf, split_name in coco.frames(by_video):
        file_name = f"{video}/{lf.frame_idx:06d}.png"
        try:
            size = _write_frame(slp, video, lf, img_root / file_name)
        except FileNotFoundError as err:
            if on_error == "raise":
                raise
            skipped.append({"file": str(slp), "record": f"frame {lf.frame_idx} of video {video}", "column": "",
                            "reason": str(err)})
            continue
        coords, empty = _labelled(slp, video, lf)
        skipped += empty
        coco.add_frame(split_name, video, file_name, size, coords, frame_idx=int(lf.frame_idx))
    if skipped:
        log.warning("%s: skipped %d records: %s", slp, len(skipped),
                    "; ".join(f"{s['record']} {s['column']}: {s['reason']}" for s in skipped))
    info = {"description": f"SLEAP labels of {slp.name}", "source": str(slp)}
    return coco.write(Path(out_dir), img_root, info, skipped)
