"""``text``: the text tower on the 17 AP-10K prompts (truncated vs full context, shared prefix vs per prompt)
and validation forwards with cached vs recomputed text features (docs/benchmarks.md)."""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from benchmarks.fixtures import DEFAULT_REPEATS, MODELS, build_clamp, model_config, synthetic_batch
from benchmarks.harness import measure
from benchmarks.report import Row


def bench_text(models: list[str], repeats: int | None, text_model: str = "ViT-B-16") -> list[Row]:
    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.models import PromptLearner, TextTower, build_clip

    reps = repeats or DEFAULT_REPEATS["text"]
    prompts = list(get_meta("ap10k").prompts)
    torch.manual_seed(0)
    tower = TextTower(build_clip(text_model, None), text_model)
    learners = {
        "short": PromptLearner(tower, prompts, truncate=True).train(),
        "full": PromptLearner(tower, prompts, truncate=False).train(),
        "unshared": PromptLearner(tower, prompts, truncate=True, share_prefix=False).train(),
    }
    for pl in learners.values():
        pl.ctx.data.copy_(learners["short"].ctx.data)

    def fwd(pl) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                pl.compute()

        return run

    def fwd_bwd(pl) -> Callable[[], None]:
        def run() -> None:
            pl.ctx.grad = None
            pl().sum().backward()

        return run

    short_len, full_len = learners["short"].sequence_length, learners["full"].sequence_length
    rows = []
    for label, make in (("fwd+bwd (train)", fwd_bwd), ("fwd (no grad)", fwd)):
        fns = {k: make(pl) for k, pl in learners.items()}
        meas = measure(fns, reps)
        rows.append(
            meas.time_row(
                "text",
                f"{text_model} text tower {label}, 17 prompts x {short_len} tokens",
                f"{full_len} tokens",
                "short",
                "full",
                target=("ratio_le", 0.25),
            )
        )
        rows.append(
            meas.time_row(
                "text",
                f"{text_model} text tower {label}, shared SOT+context prefix",
                "prefix run per prompt",
                "short",
                "unshared",
            )
        )
    del learners, tower
    gc.collect()

    # validation: N eval forwards with the text features cached vs recomputed every forward
    for key in models:
        cfg = model_config(MODELS[key])
        model = build_clamp(cfg).eval()
        x = synthetic_batch(model, 8, cfg["spec"].heatmap_size)["image"]
        n_fwd = 10 if key == "tiny" else 3

        def val(cache: bool, model=model, x=x, n_fwd=n_fwd) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    for _ in range(n_fwd):
                        if not cache:
                            model.prompt_learner.invalidate_cache()
                        model(x)

            return run

        fns = {"cached": val(True), "recomputed": val(False)}
        meas = measure(fns, repeats or DEFAULT_REPEATS[key])
        rows.append(
            meas.time_row(
                "text",
                f"validation {n_fwd} forwards x batch 8, {cfg['net']['clip_model']}, cached text features",
                "text tower rerun every forward",
                "cached",
                "recomputed",
            )
        )
        del model, fns
        gc.collect()
    return rows

