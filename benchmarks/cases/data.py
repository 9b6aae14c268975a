"""``data``: samples/s of one process through ``TopDownDataset`` in train mode, full and reduced-resolution
JPEG decoding, against ``cv2.imread`` + ``cv2.warpAffine`` alone (docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks.fixtures import ap10k_like_set, train_augment
from benchmarks.harness import measure, single_threaded
from benchmarks.report import Row


def bench_data(repeats: int, workdir: Path) -> list[Row]:
    from clamp_pl.codecs import MSRAHeatmap
    from clamp_pl.core.geometry import bbox_xywh_to_center_scale, get_warp_matrix
    from clamp_pl.data.dataset import TopDownDataset
    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.data.transforms import TopDownTransform
    from clamp_pl.formats.coco import load_coco_instances

    ann, img_dir = ap10k_like_set(workdir / "data")
    meta = get_meta("ap10k")
    instances, _, _ = load_coco_instances(ann, img_dir, meta, train=True)
    n = len(instances)
    size = (256, 256)
    codec = MSRAHeatmap(input_size=size, heatmap_size=(64, 64))
    augment = train_augment(meta)
    datasets = {
        flag: TopDownDataset(
            instances,
            TopDownTransform(meta, size, augment=augment, reduced_decode=flag),
            codec,
            feature_grid=(16, 16),
        )
        for flag in (True, False)
    }
    mats = [get_warp_matrix(*bbox_xywh_to_center_scale(i.bbox, 1.0), 0.0, size) for i in instances]

    def reference() -> None:
        for inst, mat in zip(instances, mats):
            cv2.warpAffine(cv2.imread(inst.image_path, cv2.IMREAD_COLOR), mat, size, flags=cv2.INTER_LINEAR)

    def epoch(ds) -> Callable[[], None]:
        def run() -> None:
            for i in range(len(ds)):
                ds[i]

        return run

    fns = {"on": epoch(datasets[True]), "off": epoch(datasets[False]), "ref": reference}
    with single_threaded():
        meas = measure(fns, repeats)
    kib = np.mean([Path(i.image_path).stat().st_size for i in instances]) / 1024
    detail = {"images": n, "mean_jpeg_kib": round(float(kib), 1), "input_size": size}
    ref_name = "cv2.imread + cv2.warpAffine only"
    return [
        meas.rate_row(
            "data",
            f"TopDownDataset train, full decode (data.reduced_decode=false, the default and CLAMP's; {n} "
            "AP-10K-sized JPEGs, 1 thread)",
            ref_name,
            n,
            "off",
            "ref",
            target=("value_ge", 150.0),
            detail=detail,
        ),
        meas.rate_row(
            "data",
            "TopDownDataset train, reduced-resolution decode (data.reduced_decode=true)",
            ref_name,
            n,
            "on",
            "ref",
            target=("value_ge", 150.0),
            detail=detail,
        ),
    ]

