"""Convert the Animal-Pose release (keypoints.json + images/) to COCO files in mmpose's keypoint order.

Usage::

    python scripts/prepare_animalpose.py data/animalpose [--out data/animalpose] [--val-instances 1117] [--seed 0]

Writes ``<out>/annotations/animalpose_{train,val,test}.json`` (species kept as category ids) and
``animalpose_skipped.json``, prints the images and instances of each split and every skipped record (the release
has one annotation whose image is not listed); see ``clamp_pl/formats/animalpose.py`` for the mapping and the split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clamp_pl.formats.animalpose import VAL_INSTANCES, prepare_animalpose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder holding the release's keypoints.json and images/")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: src)")
    parser.add_argument("--val-instances", type=int, default=VAL_INSTANCES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths, conversion = prepare_animalpose(args.src, args.out, val_instances=args.val_instances, seed=args.seed)
    for split, n in conversion.counts.items():
        print(f"{split}: {n['images']} images, {n['instances']} instances -> {paths[split]}")
    total = sum(n["instances"] for n in conversion.counts.values())
    print(f"converted {total} instances; skipped {len(conversion.skipped)} records (listed in {paths['skipped']})")
    for rec in conversion.skipped:
        print(f"  skipped {rec['file']}: annotation {rec['annotation']}, image_id {rec['image_id']!r}: {rec['reason']}")


if __name__ == "__main__":
    main()
