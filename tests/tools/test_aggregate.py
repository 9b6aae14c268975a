"""The aggregation table: groups by protocol x shots x model, mean ± std over seeds, missing jobs reported."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from clamp_pl.tools.aggregate import aggregate, collect, main


def _job(root: Path, name: str, shots: int, seed: int, ap: float, done: bool = True, **extra) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {
        "seed": seed,
        "data": {"_target_": "clamp_pl.data.datamodule.ToyAP10KDataModule"},
        "protocol": {"name": "fewshot", "shots": shots, "seed": seed, **extra.pop("protocol", {})},
        "model": {"net": {"clip_model": "clamp-tiny-rn", "text_branch": True}},
        **extra,
    }
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    if done:
        (job / "results.json").write_text(json.dumps({"test/AP": ap, "test/AP_species/cat": ap / 2}))


def test_means_and_stds_over_seeds(tmp_path, capsys):
    aps = {(5, 1): 0.2, (5, 2): 0.3, (20, 1): 0.5, (20, 2): 0.7}
    for i, ((shots, seed), ap) in enumerate(aps.items()):
        _job(tmp_path, f"{i}_shots={shots},seed={seed}", shots, seed, ap)
    _job(tmp_path, "4_shots=20,seed=3", 20, 3, 0.0, done=False)
    rows, missing = collect(tmp_path)
    assert len(rows) == 4 and [m.name for m in missing] == ["4_shots=20,seed=3"]
    table = aggregate(rows, ["test/AP"])
    assert [r["shots"] for r in table] == ["5", "20"]  # numeric order, not string order
    assert table[0]["test/AP mean"] == statistics.fmean([0.2, 0.3])
    assert table[1]["test/AP"] == f"{60.0:.1f} ± {100 * statistics.stdev([0.5, 0.7]):.1f}"
    assert table[1]["seeds"] == 2

    main([str(tmp_path), "--species"])
    out = capsys.readouterr().out
    assert "AP_species/cat" in out and "no results.json" in out
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.csv").is_file()


def test_starting_point_and_fewshot_taxa_are_columns(tmp_path):
    pre = "${paths.root_dir}/x/pre.pt"  # as a job's .hydra/config.yaml holds it: unresolved
    for i, (init, seed, ap) in enumerate([(None, 1, 0.1), (None, 2, 0.2), (pre, 1, 0.5), (pre, 2, 0.7)]):
        _job(tmp_path, f"{i}_job", 5, seed, ap, init_from=init, protocol={"families": ["Equidae"]},
             paths={"root_dir": "${oc.env:PROJECT_ROOT,${clamp_root:}}"})
    rows, _ = collect(tmp_path)
    table = aggregate(rows, ["test/AP"])
    assert [(r["init"], r["taxa"], r["seeds"]) for r in table] == [("pre.pt", "Equidae", 2), ("scratch", "Equidae", 2)]
    assert table[0]["test/AP mean"] == statistics.fmean([0.5, 0.7])
