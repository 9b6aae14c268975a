"""Writes the small COCO keypoint fixtures of this folder: one per naming style met in public animal datasets.

Each file has the keypoint names, in order, and the skeleton convention of a real release (the names as
listed in mmpose's ``configs/_base_/datasets/<name>.py``), with made-up keypoints on four tiny generated
images (``images/``). No pixel or label comes from the datasets themselves. Run from the repository root:
``python tests/data/wild/make_fixtures.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
LEGS = [f"{leg}{side}{i}" for side in "RL" for leg in ("foreleg", "midleg", "hindleg") for i in range(1, 5)]

# name: (keypoint names, skeleton as name pairs, skeleton index base written to the file, category name)
LAYOUTS = {
    # DeepPoseKit vinegar fly: compact side markers (eyeL, forelegR1, wingR); written with a 0-based skeleton.
    "fly": (["head", "eyeL", "eyeR", "neck", "thorax", "abdomen", *LEGS, "wingL", "wingR"],
            [("eyeL", "head"), ("eyeR", "head"), ("neck", "head"), ("thorax", "neck"), ("abdomen", "thorax"),
             ("forelegR2", "forelegR1"), ("wingL", "neck"), ("wingR", "neck")], 0, "fly"),
    # DeepPoseKit desert locust: glued abbreviations (anttipL = antenna tip left), 1-based skeleton reaching K.
    "locust": (["head", "neck", "thorax", "abdomen1", "abdomen2", "anttipL", "antbaseL", "eyeL",
                *[n for n in LEGS if "L" in n], "anttipR", "antbaseR", "eyeR", *[n for n in LEGS if "R" in n]],
               [("neck", "head"), ("thorax", "neck"), ("antbaseL", "anttipL"), ("eyeL", "antbaseL"),
                ("hindlegR4", "hindlegR3")], 1, "locust"),
    # DeepPoseKit Grevy's zebra.
    "zebra": (["snout", "head", "neck", "forelegL1", "forelegR1", "hindlegL1", "hindlegR1", "tailbase", "tailtip"],
              [("head", "snout"), ("neck", "head"), ("tailtip", "tailbase")], 1, "zebra"),
    # Horse-10: near/off (side toward / away from the camera), glued lower-case words.
    "horse10": (["Nose", "Eye", "Nearknee", "Nearfrontfetlock", "Nearfrontfoot", "Offknee", "Offfrontfetlock",
                 "Offfrontfoot", "Shoulder", "Midshoulder", "Elbow", "Girth", "Wither", "Nearhindhock",
                 "Nearhindfetlock", "Nearhindfoot", "Hip", "Stifle", "Offhindhock", "Offhindfetlock",
                 "Offhindfoot", "Ischium"],
                [("Nose", "Eye"), ("Eye", "Wither"), ("Wither", "Hip"), ("Hip", "Ischium")], 1, "horse"),
    # MacaquePose: the COCO-17 layout.
    "macaque": (["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                 "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                 "right_knee", "left_ankle", "right_ankle"],
                [("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("left_eye", "right_eye")], 1,
                "macaque"),
    # ATRW tigers, written with stray whitespace around some names.
    "atrw": ([" left_ear", "right_ear ", "nose", "right_shoulder", "right_front_paw", "left_shoulder",
              "left_front_paw", "right_hip", "right_knee", "right_back_paw", "left_hip", "left_knee",
              "left_back_paw", "tail", "center"],
             [(" left_ear", "nose"), ("right_ear ", "nose"), ("nose", "center"), ("tail", "center")], 1, "tiger"),
    # Animal Kingdom: side last (Eye_Left), 0-based skeleton.
    "ak": (["Head_Mid_Top", "Eye_Left", "Eye_Right", "Mouth_Front_Top", "Mouth_Back_Left", "Mouth_Back_Right",
            "Mouth_Front_Bottom", "Shoulder_Left", "Shoulder_Right", "Elbow_Left", "Elbow_Right", "Wrist_Left",
            "Wrist_Right", "Torso_Mid_Back", "Hip_Left", "Hip_Right", "Knee_Left", "Knee_Right", "Ankle_Left",
            "Ankle_Right", "Tail_Top_Back", "Tail_Mid_Back", "Tail_End_Back"],
           [("Eye_Left", "Head_Mid_Top"), ("Eye_Right", "Head_Mid_Top"), ("Head_Mid_Top", "Torso_Mid_Back")], 0,
           "animal"),
}
IMAGE_SIZE = (96, 72)  # (W, H)
N_IMAGES = 4


def make_images() -> None:
    rng = np.random.default_rng(0)
    (HERE / "images").mkdir(exist_ok=True)
    w, h = IMAGE_SIZE
    for i in range(N_IMAGES):
        img = np.full((h, w, 3), 40 + 30 * i, np.uint8)
        cx, cy = int(rng.integers(30, w - 30)), int(rng.integers(24, h - 24))
        cv2.ellipse(img, (cx, cy), (24, 14), float(rng.integers(0, 180)), 0, 360, (200, 180, 90), -1)
        cv2.imwrite(str(HERE / "images" / f"img{i}.png"), img)


def make_file(name: str) -> None:
    names, skeleton, base, category = LAYOUTS[name]
    k = len(names)
    rng = np.random.default_rng(sum(map(ord, name)))
    w, h = IMAGE_SIZE
    images, anns = [], []
    for i in range(N_IMAGES):
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": w, "height": h})
        for j in range(2):  # two animals per image
            x0, y0 = 4 + 44 * j, 8
            kp = np.zeros((k, 3))
            kp[:, 0] = rng.uniform(x0, x0 + 40, k)
            kp[:, 1] = rng.uniform(y0, y0 + 56, k)
            kp[:, 2] = 2
            kp[rng.random(k) < 0.15] = 0  # a few unlabelled keypoints
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x0, y0, 40.0, 56.0], "area": 40.0 * 56.0,
                         "num_keypoints": int((kp[:, 2] > 0).sum()),
                         "keypoints": [round(float(v), 2) for v in kp.reshape(-1)]})
    index = {n: i + base for i, n in enumerate(names)}
    cat = {"id": 1, "name": category, "supercategory": "animal", "keypoints": names,
           "skeleton": [[index[a], index[b]] for a, b in skeleton]}
    data = {"info": {"description": f"fixture in the naming style of {name} (made-up labels)"},
            "images": images, "annotations": anns, "categories": [cat]}
    (HERE / f"{name}.json").write_text(json.dumps(data, separators=(",", ":")))


if __name__ == "__main__":
    make_images()
    for layout in LAYOUTS:
        make_file(layout)
