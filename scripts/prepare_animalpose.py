"""Convert the Animal-Pose release (keypoints.json + images/) to COCO files in mmpose's keypoint order.

Usage::

    python scripts/prepare_animalpose.py data/animalpose [--out data/animalpose] [--val-instances 1117] [--seed 0]

Writes ``<out>/annotations/animalpose_{train,val,test}.json`` (species kept as category ids); see
``clamp_pl/data/animalpose.py`` for the mapping and the split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clamp_pl.data.animalpose import VAL_INSTANCES, prepare_animalpose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder holding the release's keypoints.json and images/")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: src)")
    parser.add_argument("--val-instances", type=int, default=VAL_INSTANCES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = prepare_animalpose(args.src, args.out, val_instances=args.val_instances, seed=args.seed)
    for split in ("train", "val", "test"):
        data = json.loads(paths[split].read_text())
        print(f"{split}: {len(data['images'])} images, {len(data['annotations'])} instances -> {paths[split]}")


if __name__ == "__main__":
    main()
