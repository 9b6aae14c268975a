"""Look at a dataset before training: ``python -m clamp_pl.tools.inspect_data data=coco data.train_ann=... ...``.

Prints, and writes to the run dir, what the pipeline will use for the configured ``data``: the keypoint table
(index, name, prompt given to the text tower, flip partner, upper/lower body, OKS sigma) with how each column was
obtained (derived from the names, declared by the file, given in the config, published values of a known
layout), then the instances each split keeps and the records it would skip. Files: ``keypoints.md``,
``keypoints.json``, and ``skipped_records.json`` when a record is unusable. Nothing is trained and no model is
built; fix what looks wrong with ``data.prompts``, ``data.flip_pairs`` and ``data.sigmas``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import exit_on_user_error, task_wrapper
from clamp_pl.data.metainfo import format_meta_table, meta_table
from clamp_pl.formats.coco import load_coco_instances

log = logging.getLogger("clamp_pl")


def inspect_datamodule(dm: Any, out_dir: Path | None = None) -> dict[str, Any]:
    """The keypoint table and per-split counts of a datamodule (nothing needs the model).

    Returns ``{"dataset", "table" (Markdown), "keypoints" (rows), "provenance", "splits": {split: {"file",
    "annotations", "instances", "skipped", "skipped_by_field"}}}``; with ``out_dir``, also writes
    ``keypoints.md``, ``keypoints.json`` and (when records are unusable) ``skipped_records.json`` there.
    """
    meta = dm.ensure_meta()
    splits: dict[str, Any] = {}
    skipped: dict[str, list] = {}
    for split, (ann, img_dir) in dm.files().items():
        _, _, report = load_coco_instances(ann, img_dir, meta, train=split == "train", on_error="skip")
        splits[split] = {"file": str(ann), "annotations": report.counts["annotations"],
                         "instances": report.counts["instances"], "skipped": len(report.skipped),
                         "skipped_by_field": report.skipped_by_field}
        if report.skipped:
            skipped[split] = report.skipped
    result = {"dataset": dm.name, "table": format_meta_table(meta), "keypoints": meta_table(meta),
              "provenance": dict(meta.provenance), "splits": splits}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "keypoints.md").write_text(result["table"] + "\n")
        (out_dir / "keypoints.json").write_text(json.dumps({k: result[k] for k in ("dataset", "provenance",
                                                                                    "keypoints", "splits")},
                                                           indent=1))
        if skipped:
            (out_dir / "skipped_records.json").write_text(json.dumps(skipped, indent=1, default=str))
    return result


@task_wrapper
def inspect_data(cfg: DictConfig) -> dict[str, Any]:
    from clamp_pl.cli.build import build_datamodule

    out = Path(cfg.paths.output_dir)
    dm = build_datamodule(cfg)
    result = inspect_datamodule(dm, out)
    lines = [result["table"], ""]
    for split, s in result["splits"].items():
        extra = f", {s['skipped']} records unusable {s['skipped_by_field']}" if s["skipped"] else ""
        lines.append(f"{split}: {s['instances']} instances of {s['annotations']} annotations{extra} ({s['file']})")
    lines.append(f"written to {out / 'keypoints.md'} and keypoints.json")
    print("\n".join(lines))
    return result


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="inspect_data")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    inspect_data(cfg)


if __name__ == "__main__":
    main()
