"""Build the reduced copy of DeepLabCut's "openfield" example embedded in ``clamp_pl/resources/dlc_openfield``.

Usage::

    python scripts/make_embedded_mouse.py ../shared/data/dlc_openfield [--out clamp_pl/resources/dlc_openfield]

Reads the 116 labelled 640x480 PNG frames of ``labeled-data/m4s1/`` and ``CollectedData_Pranav.csv``, writes
half-size (320x240) JPEG frames (quality 90) and the CSV with the coordinates rescaled (DeepLabCut's 3-row header
kept; frame paths renamed .png -> .jpg), copies ``config.yaml`` and writes README.md / LICENSE with the
attribution.

Rescaling uses the pixel-centre convention (pixel i's centre is at coordinate i): half-size pixel j averages
original pixels 2j and 2j + 1, so x -> (x + 0.5) * 0.5 - 0.5 = 0.5 * x - 0.25 (clipped at 0). Plain 0.5 * x
would shift every label by a quarter of a half-size pixel.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import cv2

SCALE = 0.5
JPEG_QUALITY = 90
VIDEO = "m4s1"
CSV_NAME = "CollectedData_Pranav.csv"

README = """# DeepLabCut "openfield" example, reduced copy (116 real labelled mouse frames)

Derived from the GitHub repository DeepLabCut/DeepLabCut, commit 2df0f46c8c8c56c8238b46b3d58384163bafb2f0,
folder `examples/openfield-Pranav-2018-10-30/` (labeled-data/m4s1: 116 PNG frames 640x480,
CollectedData_Pranav.csv, config.yaml). Produced by `scripts/make_embedded_mouse.py`:

- frames resized to 320x240 (cv2.INTER_AREA) and stored as JPEG, quality 90 (`img0000.jpg` ... `img0115.jpg`);
- CollectedData_Pranav.csv: every x, y mapped to 0.5 * v - 0.25 (half size under the pixel-centre convention;
  DeepLabCut 3-row header kept), frame paths .png -> .jpg;
- config.yaml copied unchanged (bodyparts snout, leftear, rightear, tailbase; no skeleton).

Content: one mouse, top-down view, open-field arena; all 4 keypoints labelled in all 116 frames (labeller
Pranav Mamidanna). Consecutive frames come from one video, so `clamp_pl.formats.dlc.ensure_mouse_openfield`
holds out contiguous blocks: frames 100-115 test, 90-99 val, 0-89 train.

## License / attribution
The DeepLabCut repository is licensed LGPL-3.0 (see LICENSE here); the example data has no separate data
license and is distributed in that repository as demo data. Please cite:

- Mathis, A., Mamidanna, P., Cury, K. M., Abe, T., Murthy, V. N., Mathis, M. W., Bethge, M. (2018).
  DeepLabCut: markerless pose estimation of user-defined body parts with deep learning. Nature Neuroscience 21.
- Nath, T., Mathis, A., Chen, A. C., Patel, A., Bethge, M., Mathis, M. W. (2019). Using DeepLabCut for 3D
  markerless pose estimation across species and behaviors. Nature Protocols 14 (openfield demo data).
"""

LICENSE = """The files in this folder are a modified (resized, re-encoded) copy of example data from the DeepLabCut
repository (https://github.com/DeepLabCut/DeepLabCut, examples/openfield-Pranav-2018-10-30), which is
distributed under the GNU Lesser General Public License v3.0 (LGPL-3.0):
https://www.gnu.org/licenses/lgpl-3.0.txt

Copyright of the original data: the DeepLabCut authors (Mathis et al. 2018; Nath et al. 2019). See README.md
for the changes made and the citations.
"""


def _fmt(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder holding labeled-data/m4s1 and config.yaml")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "clamp_pl" / "resources" / "dlc_openfield")
    args = parser.parse_args()
    src_dir = args.source / "labeled-data" / VIDEO
    out_dir = args.out / "labeled-data" / VIDEO
    out_dir.mkdir(parents=True, exist_ok=True)

    with open(src_dir / CSV_NAME, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[:3], rows[3:]
    out_rows = [list(r) for r in header]
    for row in body:
        frame = row[0]
        img = cv2.imread(str(args.source / frame), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read frame {args.source / frame}")
        h, w = img.shape[:2]
        small = cv2.resize(img, (round(w * SCALE), round(h * SCALE)), interpolation=cv2.INTER_AREA)
        new_frame = str(Path(frame).with_suffix(".jpg"))
        cv2.imwrite(str(args.out / new_frame), small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        coords = [_fmt(max(0.0, (float(v) + 0.5) * SCALE - 0.5)) if v.strip() else "" for v in row[1:]]
        out_rows.append([new_frame, *coords])
    with open(out_dir / CSV_NAME, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(out_rows)
    shutil.copyfile(args.source / "config.yaml", args.out / "config.yaml")
    (args.out / "README.md").write_text(README)
    (args.out / "LICENSE").write_text(LICENSE)
    print(f"wrote {len(body)} frames to {args.out}")


if __name__ == "__main__":
    main()
