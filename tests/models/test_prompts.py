import pytest
import torch

from clamp_pl.models import PromptLearner, TextTower, build_clip

AP10K = [
    "left eye", "right eye", "nose", "neck", "tail root", "left shoulder", "left elbow", "left front paw",
    "right shoulder", "right elbow", "right front paw", "left hip", "left knee", "left back paw", "right hip",
    "right knee", "right back paw",
]


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return TextTower(build_clip("clamp-tiny-vit", None, 64), "clamp-tiny-vit")


def _counter(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_token_layout_matches_clamp(tower):
    pl = PromptLearner(tower, AP10K, n_ctx=8)
    assert pl.sequence_length == 13  # SOT + 8 ctx + 3 name tokens + EOT, as the official context_length
    ids = pl.token_ids
    assert (ids[:, 0] == 49406).all() and (ids[:, 1:9] == 0).all()
    assert (ids[torch.arange(17), pl.eot_index] == 49407).all()
    # EOT = argmax of the name ids shifted by n_ctx (the official readout)
    assert (pl.eot_index == ids.argmax(dim=1)).all()
    assert pl.ctx.shape == (8, 64) and pl.ctx.abs().max() <= 2.0
    assert 0.6 < pl.ctx.std() < 1.1  # trunc-normal(0, 1) on [-2, 2]
    assert pl().shape == (17, 64)


def test_truncated_context_is_exact(tower):
    torch.manual_seed(1)
    short = PromptLearner(tower, AP10K, n_ctx=8, truncate=True)
    full = PromptLearner(tower, AP10K, n_ctx=8, truncate=False)
    full.ctx.data.copy_(short.ctx.data)
    assert (short.sequence_length, full.sequence_length) == (13, 77)
    with torch.no_grad():
        torch.testing.assert_close(short(), full(), atol=1e-5, rtol=0)


def test_gradients_reach_context_only(tower):
    pl = PromptLearner(tower, AP10K[:3], n_ctx=4)
    pl.train()
    pl().pow(2).sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in pl.text_tower.parameters())


def test_text_tower_runs_once_per_validation_epoch(tower):
    pl = PromptLearner(tower, AP10K, n_ctx=8)
    calls = _counter(pl.text_tower)
    pl.eval()
    with torch.inference_mode():
        outs = [pl() for _ in range(5)]  # several batches, flip passes
    assert len(calls) == 1 and all(o is outs[0] for o in outs)
    pl.train()  # next epoch: training recomputes every step
    pl()
    pl()
    assert len(calls) == 3
    pl.eval()
    with torch.no_grad():
        pl()
        pl()
    assert len(calls) == 4


def test_cache_invalidation(tower):
    pl = PromptLearner(tower, AP10K[:4], n_ctx=2).eval()
    calls = _counter(pl.text_tower)
    with torch.no_grad():
        a = pl()
        pl.ctx.add_(0.5)  # an optimiser step changes the context in place
        b = pl()
        assert len(calls) == 2 and not torch.allclose(a, b)
        pl.set_prompts(["tail tip", "snout", "left ear", "right ear"])
        c = pl()
        assert len(calls) == 3 and not torch.allclose(b, c)
    # a frozen context is cached even with grad enabled; an inference-mode cache is never fed to autograd
    pl.ctx.requires_grad_(False)
    pl.eval()  # (re)entering a mode drops the cache
    with torch.inference_mode():
        pl()
    out = pl()
    assert not out.is_inference() and len(calls) == 5


def test_state_dict_is_independent_of_the_names(tower):
    pl = PromptLearner(tower, AP10K, n_ctx=8)
    sd = pl.state_dict()
    assert "token_ids" not in sd and "eot_index" not in sd and "ctx" in sd
    other = PromptLearner(tower, ["withers", "throat"], n_ctx=8)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.ctx, pl.ctx)
    assert other().shape == (2, 64)


def test_too_long_or_empty_prompts_are_rejected(tower):
    with pytest.raises(ValueError, match="exceeds the text context length"):
        PromptLearner(tower, ["word " * 70], n_ctx=8)
    with pytest.raises(ValueError, match="non-empty"):
        PromptLearner(tower, ["nose", " "], n_ctx=8)


@pytest.mark.slow
def test_truncation_exact_with_vit_b16_text_tower():
    tower = TextTower(build_clip("ViT-B-16", None, 224), "ViT-B-16")
    short = PromptLearner(tower, AP10K, truncate=True)
    full = PromptLearner(tower, AP10K, truncate=False)
    full.ctx.data.copy_(short.ctx.data)
    with torch.no_grad():
        torch.testing.assert_close(short(), full(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("truncate", [True, False])
def test_shared_prefix_is_exact(tower, truncate):
    # SOT + context run once for all prompts (a prefix KV cache): same features and context gradient
    assert tower.supports_shared_prefix
    torch.manual_seed(2)
    pl = PromptLearner(tower, AP10K, n_ctx=8, truncate=truncate).train()
    weights = torch.randn(17, tower.embed_dim)
    results = []
    for share in (True, False):
        pl.share_prefix = share
        pl.ctx.grad = None
        out = pl()
        (out * weights).sum().backward()
        results.append((out.detach(), pl.ctx.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)
