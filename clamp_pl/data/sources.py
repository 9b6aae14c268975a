"""Where the real datasets come from, and the error raised when one is missing.

Real datasets live under ``paths.data_dir`` (default ``<project>/data``) in their published layout. When a
file is missing, :func:`missing_dataset_error` builds an error that names the missing path and says how to get
the data, instead of a bare ``FileNotFoundError`` deep inside a loader.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATASET_INSTRUCTIONS", "DatasetNotFoundError", "missing_dataset_error", "require_path"]

DATASET_INSTRUCTIONS: dict[str, str] = {
    "ap10k": (
        "AP-10K (Yu et al., NeurIPS 2021 Datasets & Benchmarks) is downloaded by hand: follow the download link "
        "in the README of https://github.com/AlexTheBad/AP-10K and unpack it in its published layout:\n"
        "    <data_dir>/ap10k/annotations/ap10k-{train,val,test}-split{1,2,3}.json\n"
        "    <data_dir>/ap10k/data/<image files>\n"
        "(<data_dir> is paths.data_dir, by default ./data) or point data.root at the folder holding "
        "annotations/ and data/."
    ),
    "animalpose": (
        "Animal-Pose (Cao et al., ICCV 2019): download Part I (keypoints.json and the images/ folder) from the "
        "Google Drive link in the README of https://github.com/noahcao/animal-pose-dataset, put both in "
        "<data_dir>/animalpose/ and convert it with\n"
        "    python scripts/prepare_animalpose.py <data_dir>/animalpose\n"
        "which writes <data_dir>/animalpose/annotations/animalpose_{train,val,test}.json (mmpose's keypoint "
        "order, one category per species); images stay in <data_dir>/animalpose/images/."
    ),
    "coco": "Check the train_ann / val_ann / test_ann / img_dir paths given to data=coco.",
    "dlc": ("Check data.project: a DeepLabCut project folder holding labeled-data/*/CollectedData_*.csv, or a "
            "lightning-pose CollectedData.csv."),
    "sleap": 'Check data.project: a SLEAP labels file (.slp); reading it needs pip install -e ".[sleap]".',
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder is missing; the message says how to obtain it."""


def missing_dataset_error(path: str | Path, dataset: str) -> DatasetNotFoundError:
    """The error to raise when ``path`` of ``dataset`` does not exist (``raise missing_dataset_error(...)``)."""
    how = DATASET_INSTRUCTIONS.get(str(dataset).lower().replace("-", ""), f"Provide the {dataset} dataset files.")
    return DatasetNotFoundError(f"{dataset}: {Path(path)} does not exist.\n{how}")


def require_path(path: str | Path, dataset: str) -> Path:
    """Return ``path`` when it exists; raise :func:`missing_dataset_error` otherwise."""
    path = Path(path)
    if not path.exists():
        raise missing_dataset_error(path, dataset)
    return path
