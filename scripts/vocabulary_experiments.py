"""Toy evidence for training and evaluating across keypoint vocabularies; prints markdown tables.

    python scripts/vocabulary_experiments.py --out logs/vocabulary [--seeds 0 1] [--epochs 4] [--n-train 120]
        [--init clamp_pl/resources/toy_pretrained/clamp_tiny_toy_no_equidae.pt] [--held-out L_EarBase R_EarBase]

Every training starts from ``--init`` (weights only: ``init_from=``; the default, the shipped toy starting point,
was trained on toy_ap10k images with AP-10K's names and the concatenating head, so its image tower and prompt
branch load and the prompt head starts anew; ``--init none``: from scratch).

1. Two vocabularies trained together: ``experiment=supervised_multi_toy`` (the prompt head of the tiny CLIP) on
   toy_ap10k + toy_animalpose, against a run on each alone (the same datamodule with one slot dropped), per seed;
   test AP and PCK@0.1 of each dataset on its own keypoints.
2. Evaluation across datasets by name: the toy_ap10k-alone run of the first seed scored on toy_animalpose by
   ``python -m clamp_pl.eval ... data=toy_animalpose`` (the keypoints the vocabularies share by name, and all 20
   asked by name).
3. Held-out names: toy_animalpose trained with ``--held-out`` names never labelled (``+data.datasets.b.keypoints=``
   the others), then asked for them by name; PCK@0.1 on the held-out knees of that answer against two baselines on
   the same model: the heatmap of the trained name whose text feature is nearest (cosine), and the heatmap of a
   random trained name.

Every run goes to ``--out`` (the toy sets to ``--out/data``, apart from the default toy set); the commands are
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# arm -> (slots, epochs as a multiple of --epochs): a dataset alone for twice the epochs takes about as many
# optimiser steps as the two together (each epoch of both is the two datasets' instances)
ARMS = {"both": (("a", "b"), 1), "toy_ap10k alone": (("a",), 1), "toy_animalpose alone": (("b",), 1),
        "toy_ap10k alone, 2x epochs": (("a",), 2), "toy_animalpose alone, 2x epochs": (("b",), 2)}
SLOT_NAMES = {"a": "toy_ap10k", "b": "toy_animalpose"}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), flush=True)
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    subprocess.run(cmd, cwd=REPO, check=True, env=env, stdout=subprocess.DEVNULL)


def sizes(args: argparse.Namespace, slots: tuple[str, ...]) -> list[str]:
    return [f"data.datasets.{s}.{k}={v}" for s in slots
            for k, v in (("n_train", args.n_train), ("n_val", args.n_val), ("n_test", args.n_test))]


def train(args: argparse.Namespace, run_dir: Path, seed: int, slots: tuple[str, ...], extra: list[str] = (),
          epochs: int | None = None) -> dict:
    epochs = epochs or args.epochs
    if not (run_dir / "results.json").is_file():
        dropped = [f"~data@data.datasets.{s}" for s in "ab" if s not in slots]
        run([sys.executable, "-m", "clamp_pl.train", "experiment=supervised_multi_toy", *dropped, *sizes(args, slots),
             f"seed={seed}", f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={epochs}",
             f"paths.data_dir={args.out / 'data'}", f"hydra.run.dir={run_dir}", "extras.print_config=false",
             "trainer.enable_progress_bar=false", *([] if args.init == "none" else [f"init_from={args.init}"]),
             *extra])
    return json.loads((run_dir / "results.json").read_text())


def eval_by_name(args: argparse.Namespace, ckpt: Path, out: Path) -> dict:
    if not (out / "results.json").is_file():
        run([sys.executable, "-m", "clamp_pl.eval", f"ckpt_path={ckpt}", "data=toy_animalpose",
             f"data.n_train={args.n_train}", f"data.n_val={args.n_val}", f"data.n_test={args.n_test}",
             f"paths.data_dir={args.out / 'data'}", f"hydra.run.dir={out}", "extras.print_config=false",
             "trainer.enable_progress_bar=false"])
    return json.loads((out / "results.json").read_text())


def held_out(args: argparse.Namespace, run_dir: Path, seed: int) -> dict:
    """PCK@0.1 per held-out name: asked by name (open vocabulary), nearest trained name, random trained name."""
    import pytorch_lightning as pl
    import torch

    from clamp_pl.cli.build import build_datamodule
    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.data.vocabulary import match_vocabularies
    from clamp_pl.eval import load_module, open_vocabulary_meta

    data = get_meta("animalpose")
    trained_names = [n for n in data.keypoint_names if n not in args.held_out]
    train(args, run_dir, seed, ("b",), [f"+data.datasets.b.keypoints=[{','.join(trained_names)}]"])
    model, ckpt = load_module(run_dir)
    config = {k: v for k, v in model.spec.data["config"]["datasets"]["b"].items() if k != "keypoints"}
    config.update(num_workers=0, persistent_workers=False, pin_memory=False)
    held = [data.keypoint_names.index(n) for n in args.held_out]

    def score(module, channels: list[int], keypoints: list[int]) -> list[float]:
        dm = build_datamodule(None, None, data=config)
        dm.use_spec(module.spec, codec=module.codec, check_keypoints=False)
        dm.score_channels(channels, keypoints)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                 enable_model_summary=False, default_root_dir=tmp)
            trainer.test(module, datamodule=dm, verbose=False)
        table = module.eval_analysis["test"]["keypoint_pck"]["all"]
        return [float(v) for v in table] + [float(module.last_metrics["test/PCK@0.1"])]

    match = match_vocabularies(model.spec.trained_vocabulary, data.keypoint_names)
    open_model, _ = load_module(ckpt, meta=open_vocabulary_meta(data, range(data.num_keypoints), match,
                                                                 model.spec.meta["prompts"]))
    with torch.no_grad():
        text = torch.nn.functional.normalize(open_model.net.eval().text_features(), dim=-1)
    trained_rows = [data.keypoint_names.index(n) for n in trained_names]
    nearest = [trained_rows[int(torch.argmax(text[trained_rows] @ text[h]))] for h in held]
    rng = np.random.default_rng(seed)
    random_rows = [int(rng.choice(trained_rows)) for _ in held]
    to_channel = {data.keypoint_names.index(n): i for i, n in enumerate(trained_names)}
    return {
        "asked by name": (score(open_model, held, held), [data.keypoint_names[h] for h in held]),
        "nearest trained name": (score(model, [to_channel[r] for r in nearest], held),
                                 [data.keypoint_names[r] for r in nearest]),
        "random trained name": (score(model, [to_channel[r] for r in random_rows], held),
                                [data.keypoint_names[r] for r in random_rows]),
        "trained names (reference)": (score(model, list(range(len(trained_names))), trained_rows)[-1:], []),
    }


def fmt(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "logs" / "vocabulary")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-train", type=int, default=120, help="training images per toy dataset")
    ap.add_argument("--n-val", type=int, default=30)
    ap.add_argument("--n-test", type=int, default=80)
    ap.add_argument("--init", default=str(REPO / "clamp_pl/resources/toy_pretrained/clamp_tiny_toy_no_equidae.pt"),
                    help="weights to start every run from (init_from), or none")
    ap.add_argument("--held-out", nargs="+", default=["L_EarBase", "R_EarBase"],
                    help="Animal-Pose names never labelled in the held-out-names run")
    ap.add_argument("--long-seeds", type=int, default=1, help="how many of the seeds also run the 2x-epoch arms")
    ap.add_argument("--skip", nargs="*", default=[], choices=["multi", "cross", "held_out"])
    args = ap.parse_args()
    args.out = args.out.resolve()

    lines: list[str] = []
    results: dict[str, dict[int, dict]] = {}
    if "multi" not in args.skip:
        for seed in args.seeds:
            for arm, (slots, factor) in ARMS.items():
                if factor > 1 and seed not in args.seeds[:args.long_seeds]:
                    continue
                name = arm.split()[0] + ("" if factor == 1 else f"_x{factor}")
                results.setdefault(arm, {})[seed] = train(args, args.out / f"{name}_s{seed}", seed, slots,
                                                          epochs=args.epochs * factor)
        lines += ["| trained on | seed | toy_ap10k AP | toy_ap10k PCK@0.1 | toy_animalpose AP | toy_animalpose PCK@0.1 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for arm, by_seed in results.items():
            rows = []
            for seed, res in by_seed.items():
                row = [res.get(f"test/{m}/{d}") for d in SLOT_NAMES.values() for m in ("AP", "PCK@0.1")]
                rows.append(row)
                lines.append(f"| {arm} | {seed} | " + " | ".join(fmt(v) for v in row) + " |")
            if len(rows) > 1:
                mean = [np.mean([r[i] for r in rows]) if all(r[i] is not None for r in rows) else None
                        for i in range(4)]
                lines.append(f"| {arm} | mean | " + " | ".join(fmt(v) for v in mean) + " |")
        lines.append("")
    if "cross" not in args.skip:
        seed = args.seeds[0]
        source = args.out / f"toy_ap10k_s{seed}"
        train(args, source, seed, ARMS["toy_ap10k alone"][0])
        res = eval_by_name(args, source, args.out / f"eval_ap10k_on_animalpose_s{seed}")
        mapping = json.loads((args.out / f"eval_ap10k_on_animalpose_s{seed}" / "vocabulary_mapping.json").read_text())
        lines += [f"toy_ap10k-alone model (seed {seed}) on the toy_animalpose test split, by name "
                  f"({len(mapping['matched'])} matched: "
                  + ", ".join(f"{m['source']}→{m['target']}" for m in mapping["matched"]) + "):", "",
                  "| scored on | keypoints | AP | PCK@0.1 |", "| --- | --- | --- | --- |",
                  f"| the names both vocabularies have | {int(res['test/keypoints_matched'])} | {fmt(res['test/AP'])} "
                  f"| {fmt(res['test/PCK@0.1'])} |",
                  f"| all 20 asked by name (open vocabulary) | {int(res['test/open/keypoints'])} | "
                  f"{fmt(res['test/open/AP'])} | {fmt(res['test/open/PCK@0.1'])} |", ""]
    if "held_out" not in args.skip:
        lines += ["| seed | answer for the held-out name | " + " | ".join(f"PCK@0.1 {n}" for n in args.held_out)
                  + " | PCK@0.1 both | heatmap used |", "| --- | --- | " + "--- | " * len(args.held_out) + "--- | --- |"]
        for seed in args.seeds:
            out = held_out(args, args.out / f"held_out_s{seed}", seed)
            for method, (pck, used) in out.items():
                if method.startswith("trained names"):
                    lines.append(f"| {seed} | {method}: PCK@0.1 on the labelled names | "
                                 + "– | " * len(args.held_out) + f"{fmt(pck[-1])} | – |")
                else:
                    lines.append(f"| {seed} | {method} | " + " | ".join(fmt(v) for v in pck[:-1]) + f" | "
                                 f"{fmt(pck[-1])} | {', '.join(used)} |")
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
