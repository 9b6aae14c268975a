"""How well following the animal (``track=follow``) works on a real video, against whole-frame boxes and boxes
from the labels.

The 116 DeepLabCut mouse frames shipped with the package (``clamp_pl/resources/dlc_openfield``, one video's
frames in order) are written as an mp4v video; a trained mouse model (``python -m clamp_pl.train
experiment=demo``) predicts it three ways through :func:`clamp_pl.inference.video.run_video_prediction` and the API:

* ``whole-frame``: one box = the whole frame (``track=none``, no boxes), the baseline;
* ``follow``: ``track=follow`` with the default ``follow`` settings of ``conf/predict.yaml``;
* ``label boxes``: each frame's box made from its labels as training boxes are (the crop-level accuracy the
  other two aim at), on the same decoded video frames.

PCK@0.1 (normalised by the longer side of the box made from the labels, as the training/test metric) over all
116 frames and over the test block (frames 100-115, never trained on), the frames re-acquired and the
prediction time per frame (model + following, without decoding and writing).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/measure_tracking.py --run logs/train/runs/<demo run> [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from clamp_pl.api import load_model
from clamp_pl.core.geometry import keypoint_box
from clamp_pl.evaluation.pck import pck
from clamp_pl.formats.dlc import read_dlc_csv
from clamp_pl.inference.tracking import FollowConfig
from clamp_pl.inference.video import iter_frames, run_video_prediction

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "clamp_pl" / "resources" / "dlc_openfield" / "labeled-data" / "m4s1" / "CollectedData_Pranav.csv"
TEST_BLOCK = slice(100, 116)
THR = 0.1


def write_video(frames: list[Path], path: Path, fps: float = 30.0) -> Path:
    first = cv2.imread(str(frames[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4v here")
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return path


def keypoints_of(predictions: Path, n_frames: int, k: int) -> np.ndarray:
    """``[n_frames, K, 2]`` from a predictions.json with one instance per frame (NaN where none)."""
    out = np.full((n_frames, k, 2), np.nan)
    for p in json.loads(predictions.read_text()):
        out[p["frame"]] = np.reshape(p["keypoints"], (k, 3))[:, :2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run dir (or checkpoint) of a mouse model (experiment=demo)")
    ap.add_argument("--out", default=None, help="folder for the video, the predictions and tracking.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-flip-test", action="store_true")
    ap.add_argument("--follow", nargs="*", default=[], metavar="KEY=VALUE",
                    help="FollowConfig settings other than the defaults, e.g. smoothing=0 search_scales=0.3,0.5")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="measure_tracking_"))
    out.mkdir(parents=True, exist_ok=True)
    flip = not args.no_flip_test
    fields = FollowConfig.__dataclass_fields__
    settings = {}
    for item in args.follow:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--follow {item}: unknown setting (known: {', '.join(fields)})")
        if value.lower() in ("none", "null"):
            settings[key] = None
        elif key == "search_scales":
            settings[key] = tuple(float(v) for v in value.split(","))
        else:
            settings[key] = type(fields[key].default)(value)
    follow = FollowConfig(**settings)

    names, parts, gt = read_dlc_csv(LABELS)  # frame paths sorted = video order, gt [N, K, 2]
    frames = [LABELS.parents[2] / n for n in names]
    video = write_video(frames, out / "m4s1.mp4")
    decoded = [f for _, f in iter_frames(video)]
    n, k = gt.shape[:2]
    assert len(decoded) == n, f"{video}: {len(decoded)} frames decoded, {n} written"
    h, w = decoded[0].shape[:2]
    boxes = np.array([keypoint_box(g, clip_to=(w, h)) for g in gt])
    norm = boxes[:, 2:].max(1)
    visible = np.isfinite(gt).all(-1)

    est = load_model(args.run, device=args.device)
    if list(est.meta.keypoint_names) != list(parts):
        raise SystemExit(f"{args.run}: keypoints {list(est.meta.keypoint_names)} are not the mouse's {parts}")
    rows: dict[str, dict] = {}

    def score(name: str, pred: np.ndarray, seconds: float, **extra) -> None:
        rows[name] = {"PCK@0.1 all": pck(pred, gt, visible, norm, THR),
                      "PCK@0.1 test": pck(pred[TEST_BLOCK], gt[TEST_BLOCK], visible[TEST_BLOCK], norm[TEST_BLOCK],
                                          THR),
                      "ms_per_frame": 1000.0 * seconds / n, **extra}

    for name, track in (("whole-frame", "none"), ("follow", "follow")):
        s = run_video_prediction(est, video, out / name, track=track, follow=follow, flip_test=flip, visualize=True)
        pred = keypoints_of(s["predictions"], n, k)
        extra = {"boxes_per_frame": s["boxes_predicted"] / n}
        if track == "follow":
            extra.update(reacquired_frames=s["reacquired"], searched_frames=s["searched"])
        score(name, pred, s["seconds"], **extra)

    start = time.perf_counter()
    res = est.predict(decoded, [[b.tolist()] for b in boxes], flip_test=flip)
    score("label boxes", np.stack([r[0]["keypoints"] for r in res]), time.perf_counter() - start,
          boxes_per_frame=1.0)

    results_file = Path(args.run) / "results.json"
    run_pck = json.loads(results_file.read_text()).get("test/PCK@0.1") if results_file.is_file() else None
    summary = {"run": str(args.run), "video": str(video), "frames": n, "size": [w, h], "flip_test": flip,
               "follow": dataclasses.asdict(follow),
               "torch_threads": torch.get_num_threads(), "run_test_PCK@0.1": run_pck, "modes": rows}
    (out / "tracking.json").write_text(json.dumps(summary, indent=1))
    crop = rows["label boxes"]
    print(f"{n} frames {w}x{h}, torch threads {torch.get_num_threads()}, flip test {flip}; run's test/PCK@0.1: "
          f"{run_pck}")
    print(f"{'boxes':12s} {'PCK@0.1 all':>12s} {'PCK@0.1 test':>13s} {'vs label boxes':>15s} {'ms/frame':>9s} "
          f"{'crops/frame':>12s}  re-acquired frames")
    for name, r in rows.items():
        ratio = r["PCK@0.1 all"] / crop["PCK@0.1 all"] if crop["PCK@0.1 all"] else float("nan")
        re = r.get("reacquired_frames")
        print(f"{name:12s} {r['PCK@0.1 all']:12.3f} {r['PCK@0.1 test']:13.3f} {ratio:15.2f} "
              f"{r['ms_per_frame']:9.1f} {r['boxes_per_frame']:12.2f}  {'' if re is None else f'{len(re)}: {re[:12]}'}")
    print(f"written: {out / 'tracking.json'}")


if __name__ == "__main__":
    main()
