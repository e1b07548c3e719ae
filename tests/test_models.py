"""The networks against the paper's tables (docs/method.md, Tables 3-5)."""

import pytest
import torch

from training.config import ModelConfig
from training.models import ICAP, REN, DeconvBlock, EncoderDecoder, StochasticSR, balance_phases

PAPER = ModelConfig.preset("paper")


def shapes_of(module: torch.nn.Module, x, names: list[str]) -> dict[str, tuple]:
    out = {}
    hooks = [getattr(module, n).register_forward_hook(
        lambda _m, _i, o, n=n: out.__setitem__(n, tuple(o.shape[1:]))) for n in names]
    with torch.no_grad():
        module(*x) if isinstance(x, tuple) else module(x)
    for h in hooks:
        h.remove()
    return out


def test_encoder_decoder_shapes_match_table3():
    f = EncoderDecoder(PAPER).eval()
    x, z = torch.randn(1, 3, 128, 128), torch.randn(1, 64, 8, 8)
    enc = shapes_of(f.encoder, x, ["ConvBlock1", "ResBlock1", "Conv1"])
    assert enc == {"ConvBlock1": (64, 64, 64), "ResBlock1": (64, 64, 64), "Conv1": (64, 64, 64)}
    assert len(f.encoder.ResBlock1) == 12
    zb = shapes_of(f.decoder.z_branch, z, ["DeconvBlock2", "ResBlock3", "DeconvBlock3",
                                            "ResBlock4", "DeconvBlock4", "ResBlock5"])
    assert zb == {"DeconvBlock2": (64, 16, 16), "ResBlock3": (64, 16, 16),
                  "DeconvBlock3": (64, 32, 32), "ResBlock4": (64, 32, 32),
                  "DeconvBlock4": (64, 64, 64), "ResBlock5": (64, 64, 64)}
    feats = f.encoder(x)
    dec = shapes_of(f.decoder, (feats, z, x), ["BatchNorm1", "ConvBlock2", "DeconvBlock1",
                                               "ResBlock2", "ConvBlock3", "Tanh1"])
    assert dec == {"BatchNorm1": (64, 64, 64), "ConvBlock2": (64, 64, 64),
                   "DeconvBlock1": (64, 128, 128), "ResBlock2": (64, 128, 128),
                   "ConvBlock3": (3, 128, 128), "Tanh1": (3, 128, 128)}
    assert len(f.decoder.ResBlock2) == 3
    assert f(x, z).shape == (1, 3, 128, 128)


def test_icap_and_ren_shapes_match_tables_4_and_5():
    x = torch.randn(2, 3, 128, 128)
    icap = ICAP(PAPER).eval()
    got = shapes_of(icap, x, ["ResBlock6", "ResBlock7", "ResBlock8", "ResBlock9", "Conv2"])
    assert got == {"ResBlock6": (64, 64, 64), "ResBlock7": (64, 32, 32),
                   "ResBlock8": (64, 16, 16), "ResBlock9": (64, 8, 8), "Conv2": (64, 8, 8)}
    ren = REN(PAPER).eval()
    assert shapes_of(ren, x, ["ConvBlock8", "Conv5"]) == {"ConvBlock8": (64, 8, 8),
                                                           "Conv5": (64, 8, 8)}
    for net in (icap, ren):
        mu, logvar = net(x)
        assert mu.shape == logvar.shape == (2, 64, 8, 8)


@pytest.mark.parametrize("net_cls", [ICAP, REN])
def test_mu_and_logvar_stay_in_unit_range(net_cls):
    torch.manual_seed(0)
    net = net_cls(ModelConfig.preset("tiny")).train()
    mu, logvar = net(torch.randn(4, 3, 128, 128) * 50)  # extreme inputs
    for t in (mu, logvar):
        assert t.min() >= -1 and t.max() <= 1
        assert t.abs().max() > 0.5  # the bound is doing work, not an all-zero output


def test_deterministic_path_ignores_the_z_branch():
    torch.manual_seed(0)
    f = EncoderDecoder(ModelConfig.preset("tiny", global_residual=False)).eval()
    x = torch.randn(2, 3, 128, 128)
    before = f(x, None)
    with torch.no_grad():
        for p in f.decoder.z_branch.parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(f(x, None), before)
    z = torch.randn(2, 8, 8, 8)
    assert not torch.allclose(f(x, z), before)  # ... while a latent does change the output


def test_global_residual_starts_at_the_input():
    f = EncoderDecoder(ModelConfig.preset("tiny")).eval()
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    assert torch.equal(f(x, torch.randn(1, 8, 8, 8)), x)


def test_fully_convolutional_on_patches():
    m = StochasticSR(ModelConfig.preset("tiny")).eval()
    x = torch.randn(1, 3, 64, 64)
    mu, _ = m.icap(x)
    assert mu.shape[-2:] == (4, 4)
    assert m.sr(x, mu).shape == (1, 3, 64, 64)


def test_balanced_deconv_turns_a_constant_map_into_a_constant_one():
    torch.manual_seed(0)
    plain, balanced = DeconvBlock(4, 6)[0], DeconvBlock(4, 6, balanced=True)[0]
    balanced.load_state_dict(plain.state_dict())  # the same parameters load either way
    flat = torch.ones(1, 4, 8, 8)
    inner = lambda conv: conv(flat)[0, :, 2:-2, 2:-2]  # noqa: E731 (away from the padding)
    assert inner(plain).std(dim=(1, 2)).max() > 0.1  # a random kernel makes a checkerboard
    assert inner(balanced).std(dim=(1, 2)).max() < 1e-5


def test_balance_phases_is_a_projection_that_keeps_the_mean_phase():
    w = torch.randn(3, 5, 4, 4)
    b = balance_phases(w)
    phase_sums = lambda t: torch.stack([t[:, :, r::2, c::2].sum((2, 3))  # noqa: E731
                                        for r in (0, 1) for c in (0, 1)])
    assert torch.allclose(phase_sums(b), phase_sums(b).mean(0).expand(4, -1, -1), atol=1e-5)
    assert torch.allclose(phase_sums(b).mean(0), phase_sums(w).mean(0), atol=1e-5)
    assert torch.allclose(balance_phases(b), b, atol=1e-6)
    assert not torch.allclose(b, w)


def test_balance_phases_equals_the_tap_by_tap_form():
    """The reshape-sum form against the strided one it replaced: per tap, take off a quarter of
    its phase's excess over the mean phase sum."""
    w = torch.randn(3, 5, 4, 4)
    sums = torch.stack([w[:, :, r::2, c::2].sum((2, 3)) for r in (0, 1) for c in (0, 1)], -1)
    excess = (sums - sums.mean(-1, keepdim=True)) / 4
    phase_of_tap = torch.tensor([[0, 1, 0, 1], [2, 3, 2, 3]] * 2)  # 2 * (row % 2) + col % 2
    torch.testing.assert_close(balance_phases(w), w - excess[..., phase_of_tap])


def test_reference_outputs_are_the_decoder_at_0_mu_pred_and_mu_res():
    torch.manual_seed(0)
    m = StochasticSR(ModelConfig.preset("tiny")).eval()
    x, y = torch.rand(2, 3, 128, 128) * 2 - 1, torch.rand(2, 3, 128, 128) * 2 - 1
    out = m.reference_outputs(x, y)
    with torch.no_grad():
        det = m.sr(x, None)
        torch.testing.assert_close(out["deterministic"], det)
        torch.testing.assert_close(out["icap_mean"], m.sr(x, m.icap(x)[0]))
        torch.testing.assert_close(out["ren_oracle"], m.sr(x, m.ren(y - det)[0]))
    assert set(m.reference_outputs(x)) == {"deterministic", "icap_mean"}  # no y, no oracle
