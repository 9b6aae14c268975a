"""Do the label-free quality signals (:mod:`clamp_pl.inference.qc`) find the frames a model gets wrong?

The 116 DeepLabCut mouse frames shipped with the package (``clamp_pl/resources/dlc_openfield``, one video's frames
in order) are written as an mp4v video and checked with a mouse model trained on few frames, so that it makes
errors (e.g. ``python -m clamp_pl.train experiment=demo protocol=fewshot protocol.shots=10
data.batch_size=10 trainer.max_epochs=150``). A frame is wrong when one of its labelled keypoints is further
than 0.1 of the longer side of the label box (the box made from its labels, as for training) from the label.
The frames the model (or any ensemble member) was trained on are left out (``--include-trained`` keeps them):
the tool never proposes labelled frames.

For each signal and the default combination: AUROC of the frame signal for "wrong" (0.5 = random ranking) and
precision of the 10 highest-ranked frames (random ranking: the share of wrong frames). ``--picture`` writes the QC
picture of the video with the frames the tool would propose marked.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/measure_qc.py --run <run> [--ensemble <run2> ...]
        [--boxes follow|labels|whole-frame] [--picture docs/img/qc_mouse.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from measure_tracking import write_video  # the frames as a video, as the tracking measurement writes it
from scipy.stats import rankdata

from clamp_pl.api import load_model
from clamp_pl.core.geometry import keypoint_box
from clamp_pl.formats.dlc import ensure_mouse_openfield, read_dlc_csv
from clamp_pl.inference.qc import (
    COMBINED,
    SIGNALS,
    combine,
    plot_qc,
    run_video_qc,
    select_frames,
    write_qc_csv,
)
from clamp_pl.inference.video import iter_frames

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "clamp_pl" / "resources" / "dlc_openfield" / "labeled-data" / "m4s1" / "CollectedData_Pranav.csv"
THR = 0.1
TOP = 10


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney, ties counted half)."""
    pos = np.asarray(positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def trained_frames(run: Path, frame_names: list[str]) -> set[int]:
    """Frame positions (in ``frame_names``) of the annotations a run trained on (its ``split.json``)."""
    split = json.loads((run / "split.json").read_text())
    converted = ensure_mouse_openfield(Path(tempfile.mkdtemp(prefix="measure_qc_data_")))
    anns = json.loads(converted["train"].read_text())
    files = {im["id"]: Path(im["file_name"]).name for im in anns["images"]}
    image_of = {a["id"]: a["image_id"] for a in anns["annotations"]}
    names = {files[image_of[a]] for a in split["train_ann_ids"]}
    return {i for i, n in enumerate(frame_names) if Path(n).name in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run dir of a mouse model trained on few frames")
    ap.add_argument("--ensemble", nargs="*", default=[], help="more run dirs: the ensemble spread")
    ap.add_argument("--boxes", default="follow", choices=("whole-frame", "follow", "labels"),
                    help="the crop of each frame: the whole frame, following the animal (track=follow), or the box "
                         "made from the frame's labels (the model's own errors, without the tracking's)")
    ap.add_argument("--include-trained", action="store_true",
                    help="score the frames the models trained on too (left out by default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="folder for the video and qc.json")
    ap.add_argument("--picture", default=None, help="write the QC picture here")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="measure_qc_"))
    out.mkdir(parents=True, exist_ok=True)

    names, parts, gt = read_dlc_csv(LABELS)  # frame paths sorted = video order; gt [N, K, 2]
    video = write_video([LABELS.parents[2] / n for n in names], out / "m4s1.mp4")
    runs = [Path(args.run), *(Path(r) for r in args.ensemble)]
    estimators = [load_model(r, device=args.device) for r in runs]
    n = len(gt)
    h, w = next(iter_frames(video))[1].shape[:2]
    label_boxes = np.array([keypoint_box(g, clip_to=(w, h)) for g in gt])
    norm = label_boxes[:, 2:].max(axis=1)
    qc = run_video_qc(estimators, video, track="follow" if args.boxes == "follow" else "none",
                      boxes=label_boxes if args.boxes == "labels" else None)
    assert len(qc.frames) == n, f"{video}: {len(qc.frames)} frames decoded, {n} written"
    visible = np.isfinite(gt).all(-1)
    err = np.linalg.norm(qc.keypoints - gt, axis=-1) / norm[:, None]
    wrong = (np.where(visible, err, 0.0) > THR).any(axis=1)
    trained = set() if args.include_trained else set().union(*(trained_frames(r, names) for r in runs))
    keep = np.array([i not in trained for i in range(n)])

    signals = {s: qc.per_frame[s] for s in SIGNALS if s in qc.per_frame}
    rankings = {**signals, COMBINED: combine(signals, list(signals))}
    y = wrong[keep]
    rows = {}
    for name, values in rankings.items():
        v = values[keep]
        top = np.argsort(-v, kind="stable")[:TOP]
        rows[name] = {"AUROC": auroc(v, y), f"precision@{TOP}": float(y[top].mean())}
    base = float(y.mean())
    picked = select_frames(rankings[COMBINED], qc.normalized_poses(), 20, ~keep)
    pck = float((err[keep] <= THR)[visible[keep]].mean())
    summary = {"runs": [str(r) for r in runs], "boxes": args.boxes, "frames": int(keep.sum()), "PCK@0.1": pck,
               "trained_frames_left_out": sorted(trained), "wrong_frames": int(y.sum()), "base_rate": base,
               "threshold": THR, "signals": rows, "picked_frames": [int(qc.frames[i]) for i in picked],
               "wrong": [int(i) for i in np.flatnonzero(wrong)], "error": np.round(err, 4).tolist()}
    (out / "qc.json").write_text(json.dumps(summary, indent=1))
    write_qc_csv(qc, out / "m4s1_qc.csv", rankings[COMBINED], picked, ~keep)
    if args.picture:
        plot_qc(qc, Path(args.picture), rankings[COMBINED], picked,
                title=f"{video.name}: quality signals, {len(runs)} model(s), {args.boxes} boxes (red = 20 frames "
                      "proposed)")
    print(f"{n} frames, {len(trained)} trained on left out: {int(keep.sum())} frames, PCK@{THR} {pck:.3f}, "
          f"{int(y.sum())} wrong (a keypoint off by > {THR} of the box); models: {len(runs)}, boxes: {args.boxes}")
    print(f"| signal | AUROC | precision@{TOP} |")
    print("| --- | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['AUROC']:.3f} | {r[f'precision@{TOP}']:.2f} |")
    print(f"| random ranking | 0.500 | {base:.2f} |")
    print(f"written: {out / 'qc.json'}")


if __name__ == "__main__":
    main()
