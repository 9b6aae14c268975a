import torch
from torch import nn

from clamp_pl.models import ContextDecoder, HeatmapHead, PromptEncoder, UpsampleHead


def test_prompt_encoder_is_permutation_equivariant():
    torch.manual_seed(0)
    enc = PromptEncoder(64, heads=8).eval()
    x = torch.randn(2, 5, 64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[:, perm], enc(x[:, perm]), atol=1e-5, rtol=1e-5)
    names = {n for n, _ in enc.named_parameters()}
    assert not any("positional_embedding" in n or "text_projection" in n for n in names)


def test_context_decoder_shapes_and_init():
    torch.manual_seed(0)
    dec = ContextDecoder(visual_dim=64, width=32, heads=4, layers=3).eval()
    out = dec(torch.randn(2, 17, 64), torch.randn(2, 1 + 16, 64))
    assert out.shape == (2, 17, 64)
    assert len(dec.decoder) == 3
    linears = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert all(m.bias is None or (m.bias == 0).all() for m in linears)
    assert all(0.015 < m.weight.std() < 0.025 for m in linears)  # trunc-normal, std 0.02
    assert dec.decoder[0].self_attn.q_proj.bias is None


def test_heads_upsample_and_init():
    head = HeatmapHead(80, 17, num_deconv=2, channels=32)
    assert head(torch.randn(2, 80, 16, 16)).shape == (2, 17, 64, 64)
    assert head.final_layer.weight.std() < 0.002 and (head.final_layer.bias == 0).all()
    assert not any(m.bias is not None for m in head.modules() if isinstance(m, nn.ConvTranspose2d))
    up = UpsampleHead(17, num_deconv=3, channels=256)
    assert up(torch.randn(1, 17, 8, 8)).shape == (1, 17, 64, 64)
    assert up.final_layer.weight.std() > 0.01  # PyTorch default init, as the official upconv head
