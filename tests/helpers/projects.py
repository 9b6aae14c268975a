"""Small DeepLabCut / lightning-pose / SLEAP projects written on the fly for the data tests: generated frames
(a few hundred bytes each) with made-up labels in each tool's own file layout, and the same three layouts made
from the real DeepLabCut openfield frames and labels that ship with the package (``openfield_*``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from clamp_pl.formats.dlc import RESOURCE_DIR

#: the shipped openfield project: 116 real frames of one mouse (m4s1) labelled by DeepLabCut's authors
OPENFIELD_CSV = RESOURCE_DIR / "labeled-data" / "m4s1" / "CollectedData_Pranav.csv"

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


def openfield_dlc_project(root: Path) -> Path:
    """A copy of the shipped openfield DeepLabCut project (``config.yaml``, ``labeled-data/m4s1``: 116 JPEG frames
    and ``CollectedData_Pranav.csv``) at ``root``. Returns the label CSV, which tests may rewrite."""
    shutil.copytree(RESOURCE_DIR, root, ignore=shutil.ignore_patterns("LICENSE", "README.md"))
    return root / OPENFIELD_CSV.relative_to(RESOURCE_DIR)


def openfield_h5_twin(csv_path: Path) -> Path:
    """The ``.h5`` twin DeepLabCut keeps beside a label CSV (pandas MultiIndex table, key ``df_with_missing``),
    written from the CSV as DeepLabCut's ``convertcsv2h5`` does. Returns it."""
    import pandas as pd

    df = pd.read_csv(csv_path, header=[0, 1, 2], index_col=0)
    out = csv_path.with_suffix(".h5")
    df.to_hdf(out, key="df_with_missing", mode="w")
    return out


def openfield_lightning_pose_project(root: Path) -> Path:
    """The openfield frames as a lightning-pose project: ``CollectedData.csv`` at ``root`` (DeepLabCut's
    single-animal format), frames in ``labeled-data/m4s1/``, no ``config.yaml``. Returns the CSV."""
    csv_path = openfield_dlc_project(root)
    (root / "config.yaml").unlink()
    out = root / "CollectedData.csv"
    csv_path.rename(out)
    return out


def openfield_slp_project(root: Path, n_frames: int = 12) -> Path:
    """The first ``n_frames`` openfield frames as a SLEAP project saved with sleap-io: an image-sequence video of
    the real JPEGs, one user-labelled mouse per frame with the real labels, the four body parts as the skeleton
    (snout-tailbase edge, left/right ear symmetry). Returns the ``.slp``."""
    import sleap_io as sio

    from clamp_pl.formats.dlc import read_dlc_csv

    frames, bodyparts, coords = read_dlc_csv(OPENFIELD_CSV)
    skeleton = sio.Skeleton(nodes=[sio.Node(n) for n in bodyparts], name="mouse")
    skeleton.add_edge("snout", "tailbase")
    skeleton.add_symmetry("leftear", "rightear")
    files = []
    for frame in frames[:n_frames]:
        dst = root / "m4s1" / Path(frame).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RESOURCE_DIR / frame, dst)
        files.append(str(dst))
    video = sio.Video.from_filename(files)
    labelled = [sio.LabeledFrame(video=video, frame_idx=i, instances=[sio.Instance.from_numpy(coords[i], skeleton)])
                for i in range(n_frames)]
    out = root / "openfield.slp"
    sio.save_slp(sio.Labels(labeled_frames=labelled, videos=[video], skeletons=[skeleton]), str(out))
    return out


# seconds-long CPU runs with the tiny model (what debug=tiny does for the toy set)
TINY_OWN_DATA = [
    "model=clamp_tiny", "trainer=cpu", "data.batch_size=4", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "extras.print_config=false", "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]
