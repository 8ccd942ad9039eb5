from __future__ import annotations

import numpy as np
import pytest
import torch

from qdit.diffusion.distributed import shard
from qdit.diffusion.sampler import SampleNoise, SamplerConfig, generate, sample_images, sample_seed
from qdit.diffusion.schedule import GaussianDiffusion, linear_betas, spaced_timesteps


def test_linear_schedule_closed_form():
    d = GaussianDiffusion.linear(1000)
    t = np.arange(1000)
    beta = 1e-4 + (0.02 - 1e-4) * t / 999
    np.testing.assert_allclose(d.betas, beta, rtol=1e-12)
    acp = np.exp(np.cumsum(np.log1p(-beta)))
    np.testing.assert_allclose(d.alphas_cumprod, acp, rtol=1e-10)
    # well-known values of the DDPM linear schedule
    assert d.alphas_cumprod[-1] == pytest.approx(4.0358e-05, rel=1e-3)
    np.testing.assert_allclose(
        d.posterior_variance[1:], beta[1:] * (1 - acp[:-1]) / (1 - acp[1:]), rtol=1e-10
    )
    assert d.posterior_variance[0] == 0.0


def test_schedule_scales_with_steps():
    np.testing.assert_allclose(linear_betas(100)[[0, -1]], [1e-3, 0.2])


def test_respacing_keeps_marginals():
    d = GaussianDiffusion.linear()
    r = d.respaced(50)
    assert r.num_timesteps == 50
    assert r.timestep_map[0] == 0 and r.timestep_map[-1] == 999
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map], rtol=1e-10)
    assert spaced_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError):
        spaced_timesteps(1000, 0)


def test_q_sample_and_predict_x0_invert():
    d = GaussianDiffusion.linear()
    x0 = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_x0(xt, t, eps), x0)
    torch.testing.assert_close(d.predict_eps(xt, t, x0), eps)


def test_sample_seed_streams_are_distinct_and_stable():
    assert sample_seed(0, 1) == sample_seed(0, 1)
    assert len({sample_seed(s, i) for s in range(3) for i in range(100)}) == 300
    a = SampleNoise(0, [3, 4]).randn((1, 2, 2))
    b = SampleNoise(0, [4]).randn((1, 2, 2))
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sampler_deterministic_and_batch_size_independent(tiny_dit, method):
    cfg = SamplerConfig(steps=6, method=method, cfg_scale=1.5)
    labels = np.array([0, 1, 2, 0, 1])
    a = generate(tiny_dit, (1, 8, 8), 3, labels, seed=7, config=cfg, batch_size=5)
    b = generate(tiny_dit, (1, 8, 8), 3, labels, seed=7, config=cfg, batch_size=2)
    c = generate(tiny_dit, (1, 8, 8), 3, labels[3:], seed=7, config=cfg, indices=[3, 4], batch_size=1)
    assert a.shape == (5, 1, 8, 8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[3:], c, rtol=1e-5, atol=1e-5)
    again = generate(tiny_dit, (1, 8, 8), 3, labels, seed=7, config=cfg, batch_size=5)
    assert torch.equal(a, again)
    other = generate(tiny_dit, (1, 8, 8), 3, labels, seed=8, config=cfg, batch_size=5)
    assert (a - other).abs().mean() > 1e-2


def test_guidance_changes_output_and_cfg1_is_plain(tiny_dit):
    labels = np.array([0, 1])
    plain = generate(tiny_dit, (1, 8, 8), 3, labels, 0, SamplerConfig(steps=4, cfg_scale=1.0))
    guided = generate(tiny_dit, (1, 8, 8), 3, labels, 0, SamplerConfig(steps=4, cfg_scale=4.0))
    assert (plain - guided).abs().max() > 1e-3


def test_sample_images_uint8_balanced_labels(tiny_dit):
    images, labels = sample_images(tiny_dit, 7, seed=1, config=SamplerConfig(steps=3), batch_size=3)
    assert images.dtype == np.uint8 and images.shape == (7, 8, 8, 1)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_shard_covers_everything_once():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sampler_config_validation():
    with pytest.raises(ValueError, match="unknown sampling method"):
        SamplerConfig(method="euler")
    with pytest.raises(ValueError, match="cfg scale"):
        SamplerConfig(cfg_scale=0.5)


def _official_dit_cfg(out: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """facebookresearch/DiT's ``forward_with_cfg`` on a [cond; uncond] model output, rewritten here:
    the first 3 channels are guided, the rest (the 4th latent channel, the learned variance) are kept;
    the sampler keeps the conditional half."""
    eps, rest = out[:, :3], out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half, half]), rest], dim=1)[: len(out) // 2]


def test_guidance_of_the_first_channels_is_official_dits_forward_with_cfg():
    from qdit.diffusion.sampler import guided

    torch.manual_seed(0)
    weight = torch.randn(8, 4)  # a toy "model": 4 latent channels in, 4 noise + 4 variance channels out

    def model(x, t, y):
        return torch.einsum("oc,bchw->bohw", weight, x) + (y.float() + t.float() / 1000)[:, None, None, None]

    x, t, y = torch.randn(3, 4, 2, 2), torch.tensor([10, 500, 999]), torch.tensor([0, 1, 2])
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 5)]))
    official = _official_dit_cfg(out, 4.0)
    three = guided(model, 4.0, 5, 4, cfg_channels=3)(x, t, y)
    assert torch.allclose(three, official, atol=1e-6)
    every = guided(model, 4.0, 5, 4)(x, t, y)  # the default guides all 4 noise channels
    cond, uncond = out.chunk(2)
    assert torch.allclose(every[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), atol=1e-6)
    assert torch.allclose(every[:, 4:], cond[:, 4:]) and not torch.allclose(every[:, 3], three[:, 3])
    assert torch.equal(every, guided(model, 4.0, 5, 4, cfg_channels=4)(x, t, y))
    with pytest.raises(ValueError, match="4 channels"):
        guided(model, 4.0, 5, 4, cfg_channels=5)
    with pytest.raises(ValueError, match="positive"):
        SamplerConfig(cfg_channels=0)


def test_sampler_passes_cfg_channels_through(tiny_dit):
    from qdit.diffusion.sampler import guided

    seen = []

    def spy(x, t, y):
        seen.append(len(x))
        return tiny_dit(x, t, y)

    cfg = SamplerConfig(steps=2, cfg_scale=3.0, cfg_channels=1)
    a = generate(tiny_dit, (1, 8, 8), 3, [0, 1], 0, cfg)
    b = generate(guided(spy, 3.0, 3, 1), (1, 8, 8), 3, [0, 1], 0, SamplerConfig(steps=2, cfg_scale=1.0))
    assert torch.equal(a, b) and seen == [4, 4]
    with pytest.raises(ValueError, match="1 channels"):
        generate(tiny_dit, (1, 8, 8), 3, [0], 0, SamplerConfig(steps=2, cfg_channels=2))


def test_one_step_process_has_finite_coefficients() -> None:
    """A process respaced to one step (``--steps 1``, ``--calib-steps 1``) is usable: every coefficient is
    finite (the t = 0 log variance used to read past the end of a length-1 array)."""
    import numpy as np

    from qdit.diffusion.schedule import GaussianDiffusion

    one = GaussianDiffusion.linear().respaced(1)
    assert one.num_timesteps == 1
    assert np.isfinite(one.posterior_log_variance_clipped).all() and np.isfinite(one.posterior_mean_coef1).all()
