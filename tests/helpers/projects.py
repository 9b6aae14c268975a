"""Small DeepLabCut / lightning-pose / SLEAP projects written on the fly for the data tests: generated frames
(a few hundred bytes each) with made-up labels in each tool's own file layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

BODYPARTS = ["snout", "leftear", "rightear", "tailbase"]
SIZE = (64, 48)  # (W, H)


def _frame(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.full((SIZE[1], SIZE[0], 3), int(rng.integers(20, 80)), np.uint8)
    cv2.circle(img, (int(rng.integers(16, 48)), int(rng.integers(12, 36))), 10, (180, 200, 90), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _points(rng: np.random.Generator, x0: float) -> np.ndarray:
    """(K, 2) points of one animal in a 24-px wide band starting at x0."""
    return np.stack([rng.uniform(x0, x0 + 24, len(BODYPARTS)), rng.uniform(6, 42, len(BODYPARTS))], 1).round(2)


def make_dlc_project(root: Path, videos: dict[str, int], *, individuals: list[str] | None = None,
                     single_bodyparts: list[str] | None = None, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A DeepLabCut project: ``config.yaml`` and ``labeled-data/<video>/CollectedData_me.csv`` with ``n`` frames
    ``img000.png``... per video. ``individuals`` makes it multi-animal (DLC 2.3 layout: four header rows, three
    index columns); ``single_bodyparts`` adds maDLC's unique body parts. Returns ``{video: {frame: coords}}``,
    coords (I, K, 2)."""
    rng = np.random.default_rng(seed)
    multi = individuals is not None
    inds = individuals or ["animal"]
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"Task: fixture\nscorer: me\nmultianimalproject: {str(multi).lower()}\n"
                                      f"bodyparts: {BODYPARTS}\nskeleton:\n- [snout, tailbase]\n")
    truth: dict[str, dict[str, np.ndarray]] = {}
    for v, (video, n) in enumerate(sorted(videos.items())):
        folder = root / "labeled-data" / video
        cols = [(i, bp, c) for i in inds for bp in BODYPARTS for c in "xy"]
        cols += [("single", bp, c) for bp in single_bodyparts or [] for c in "xy"]
        index = 3 if multi else 1
        header = [["scorer"] + [""] * (index - 1) + ["me"] * len(cols)]
        if multi:
            header.append(["individuals"] + [""] * (index - 1) + [c[0] for c in cols])
        header.append(["bodyparts"] + [""] * (index - 1) + [c[1] for c in cols])
        header.append(["coords"] + [""] * (index - 1) + [c[2] for c in cols])
        rows = []
        truth[video] = {}
        for f in range(n):
            name = f"img{f:03d}.png"
            _frame(folder / name, seed * 1000 + v * 100 + f)
            coords = np.stack([_points(rng, 4 + 30 * i) for i in range(len(inds))])
            if multi and f == 1:
                coords[1] = np.nan  # the second animal is out of view in frame 1
            truth[video][name] = coords
            values = [("" if np.isnan(x) else f"{x:g}") for x in coords.reshape(-1)]
            values += ["1", "1"] * len(single_bodyparts or [])
            idx = ["labeled-data", video, name] if multi else [f"labeled-data/{video}/{name}"]
            rows.append(idx + values)
        lines = [",".join(r) for r in header + rows]
        (folder / "CollectedData_me.csv").write_text("\n".join(lines) + "\n")
    return truth


def make_lightning_pose_project(root: Path, videos: dict[str, int], seed: int = 0) -> Path:
    """A lightning-pose project: one ``CollectedData.csv`` at the root (DLC's single-animal format) for every
    video's frames in ``labeled-data/<video>/``. Returns the CSV."""
    make_dlc_project(root, videos, seed=seed)
    lines = []
    for i, csv in enumerate(sorted(root.glob("labeled-data/*/CollectedData_me.csv"))):
        rows = csv.read_text().splitlines()
        lines += rows if i == 0 else rows[3:]
        csv.unlink()
    (root / "config.yaml").unlink()
    out = root / "CollectedData.csv"
    out.write_text("\n".join(lines) + "\n")
    return out


def make_slp_project(root: Path, videos: dict[str, int], seed: int = 0) -> Path:
    """A SLEAP project saved with sleap-io: one image-sequence video per entry (``n`` PNG frames), two
    user-labelled animals per frame (the second one missing its tail base), the skeleton with edges and a
    left/right ear symmetry, and a predicted instance on the first frame (not a label). Returns the ``.slp``."""
    import sleap_io as sio

    rng = np.random.default_rng(seed)
    skeleton = sio.Skeleton(nodes=[sio.Node(n) for n in BODYPARTS], name="mouse")
    skeleton.add_edge("snout", "leftear")
    skeleton.add_edge("snout", "tailbase")
    skeleton.add_symmetry("leftear", "rightear")
    vids, frames = [], []
    for v, (video, n) in enumerate(sorted(videos.items())):
        files = []
        for f in range(n):
            path = root / video / f"frame{f:03d}.png"
            _frame(path, seed * 1000 + v * 100 + f)
            files.append(str(path))
        vid = sio.Video.from_filename(files)
        vids.append(vid)
        for f in range(n):
            a, b = _points(rng, 4), _points(rng, 34)
            b[3] = np.nan
            insts = [sio.Instance.from_numpy(a, skeleton), sio.Instance.from_numpy(b, skeleton)]
            if f == 0:
                insts.append(sio.PredictedInstance.from_numpy(_points(rng, 20), skeleton=skeleton,
                                                              point_scores=np.ones(len(BODYPARTS)), score=1.0))
            frames.append(sio.LabeledFrame(video=vid, frame_idx=f, instances=insts))
    labels = sio.Labels(labeled_frames=frames, videos=vids, skeletons=[skeleton])
    out = root / "project.slp"
    sio.save_slp(labels, str(out))
    return out
