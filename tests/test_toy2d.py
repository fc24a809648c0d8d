"""The 2D toy: metrics against closed forms, and the paper's claims on short training runs."""
import json
import math

import numpy as np
import pytest
import torch

import models
import toy2d


def test_metrics_of_true_data_match_closed_forms():
    torch.manual_seed(0)
    x = toy2d.DATASETS['8gaussians'](10_000)
    m = toy2d.evaluate(x, '8gaussians')
    # |x - c|^2 / std^2 ~ chi^2_2 = Exp(mean 2): P(within 3 std) = 1 - e^{-4.5}
    assert m['modes'] == 8 and abs(m['hq_fraction'] - (1 - math.exp(-4.5))) < 0.004
    # per-coordinate spread of the points kept: sqrt(E[u | u < 9] / 2), u ~ Exp(mean 2)
    truncated = math.sqrt((2 - 9 * math.exp(-4.5) / (1 - math.exp(-4.5))) / 2)
    assert truncated - 0.07 < m['spread_min'] <= m['spread_max'] < truncated + 0.07   # ~3.5 s.e.
    assert m['energy_distance'] < 3 * m['energy_distance_floor']


def test_metrics_see_collapse_and_bridging():
    centres = toy2d._centres('8gaussians')
    one_mode = centres[0] + toy2d.STD * torch.randn(5000, 2)
    assert toy2d.evaluate(one_mode, '8gaussians')['modes'] == 1
    a = torch.rand(5000) * 2 * math.pi                    # the ring through the modes: bridged
    ring = 2 * torch.stack([a.cos(), a.sin()], 1)
    m = toy2d.evaluate(ring, '8gaussians')
    assert m['hq_fraction'] < 0.35 and m['energy_distance'] > 20 * m['energy_distance_floor']
    thin = centres[torch.arange(5000) % 8] + 0.2 * toy2d.STD * torch.randn(5000, 2)
    assert toy2d.evaluate(thin, '8gaussians')['spread_max'] < 0.3


def test_energy_distance_closed_form():
    """1D N(0,1) vs N(mu,1): 2 E|X-Y| - E|X-X'| - E|Y-Y'|, with X - Y ~ N(-mu, 2)."""
    torch.manual_seed(0)
    mu, n = 1.0, 4000
    x = torch.stack([torch.randn(n), torch.zeros(n)], 1)
    y = torch.stack([torch.randn(n) + mu, torch.zeros(n)], 1)
    s = math.sqrt(2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * s**2)) + mu * math.erf(mu / (s * math.sqrt(2)))
    exact = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    assert abs(toy2d.energy_distance(x, y) - exact) < 0.03
    assert toy2d.energy_distance(x, x) == pytest.approx(0, abs=1e-9)


def test_short_kld_run_finds_the_modes():
    """The full run (README) reaches 8 modes and >= 0.9 high quality; a short one finds all modes
    and puts far more mass on them than chance (~0.02) or the MMSE baseline (0.0)."""
    G, s = toy2d.train('kld', iters=3000, seed=0, progress=False)
    torch.manual_seed(1)
    x = toy2d.sample_rgm(G, s, (5000, 2), G.nz)
    m = toy2d.evaluate(x, '8gaussians')
    assert m['modes'] == 8 and m['hq_fraction'] > 0.2


def test_mmse_bridges_the_modes():
    """The paper's central claim: the MMSE estimator with K = 4 large steps averages modes."""
    G, s = toy2d.train('mmse', iters=1000, seed=0, progress=False)
    x = toy2d.sample_rgm(G, s, (5000, 2), G.nz)
    assert toy2d.evaluate(x, '8gaussians')['hq_fraction'] < 0.1


def test_seeded_training_is_reproducible():
    def params(seed, method):
        G, _ = toy2d.train(method, iters=15, batch_size=64, seed=seed, progress=False)
        return torch.cat([p.flatten() for p in G.parameters()])
    for method in ('kld', 'dswd', 'mmd'):
        assert torch.equal(params(3, method), params(3, method))
    assert not torch.equal(params(3, 'kld'), params(4, 'kld'))


def test_bad_arguments():
    with pytest.raises(ValueError, match='unknown method'):
        toy2d.train('vae', iters=1)
    with pytest.raises(ValueError, match='unknown data set'):
        toy2d.train('kld', dataset='moons', iters=1)
    with pytest.raises(ValueError, match='K'):
        toy2d.train('kld', K=0, iters=1)
    with pytest.raises(ValueError, match='nz'):
        toy2d.train('kld', nz=-1, iters=1)


def test_lr_decay_is_linear_over_the_last_share_of_g_steps(monkeypatch):
    """lr_decay = 0.4 of 10 iterations: G's lr is 1e-3 for 6 steps, then 1e-3 * (4, 3, 2, 1) / 4;
    the discriminator keeps its lr."""
    seen = {}
    step = torch.optim.Adam.step

    def record(self, *a, **kw):
        seen.setdefault(id(self), []).append(self.param_groups[0]['lr'])
        return step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.Adam, 'step', record)
    toy2d.train('kld', iters=10, batch_size=16, lr_decay=0.4, progress=False)
    d, g = seen.values()                                # the critic steps first in each iteration
    assert g == pytest.approx([1e-3] * 6 + [1e-3, 0.75e-3, 0.5e-3, 0.25e-3]) and d == [1e-3] * 10
    with pytest.raises(ValueError, match='lr_decay'):
        toy2d.train('kld', iters=1, lr_decay=1.5)


def test_main_writes_figure_samples_and_metrics(tmp_path):
    args = toy2d.build_parser().parse_args(['--K', '2', '--iters', '5', '--batch-size', '100',
                                            '--n-samples', '5000', '--out', str(tmp_path)])
    toy2d.main(args)
    for method in toy2d.METHODS:
        x = np.load(tmp_path / f'samples_{method}.npy')
        assert x.shape == (5000, 2) and np.isfinite(x).all()
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert set(metrics['results']) == {'data', *toy2d.METHODS}
    assert metrics['command'].startswith('python toy2d.py') and metrics['config']['seed'] == args.seed
    assert len(metrics['date']) == 10 and 'cores' in metrics['machine']      # a results file for bench/render.py
    assert (tmp_path / 'toy2d.png').stat().st_size > 10_000


def test_posterior_training_and_sampling_use_algorithm_1():
    """With --posterior the fidelity is the forward step's likelihood and sampling draws
    x_k ~ q(x_k | x_{k+1}, x0_hat); a short run already puts the samples on the data's circle
    of radius 2 and reaches every mode (it starts more slowly than Algorithm 2)."""
    G, s = toy2d.train('kld', iters=2500, posterior=True, seed=0, progress=False)
    x = toy2d.sample_rgm(G, s, (5000, 2), G.nz, posterior=True)
    assert 1.6 < x.norm(dim=1).mean() < 2.4 and toy2d.evaluate(x, '8gaussians')['modes'] == 8


def test_kld_g_step_draws_afresh_from_the_d_step(monkeypatch):
    """As the authors do: each iteration's G step draws its own k, x_k, x_{k+1} and z, not the
    D step's. The levels D sees in its real batch and in the G step's fake batch differ (random
    levels per sample: 64 equal draws out of 4 levels would have chance 4^-64)."""
    seen = []
    forward = models.ToyDiscriminator.forward

    def record(self, x, k):
        seen.append(k.clone())
        return forward(self, x, k)
    monkeypatch.setattr(models.ToyDiscriminator, 'forward', record)
    toy2d.train('kld', iters=1, batch_size=64, progress=False)
    d_real, d_fake, g_fake = seen              # D step: real and fake on one draw; then the G step
    assert torch.equal(d_real, d_fake) and not torch.equal(d_real, g_fake)


def test_parallel_training_gives_the_networks_of_sequential_training():
    kwargs = {m: dict(method=m, iters=5, batch_size=32, seed=3, progress=False) for m in ('kld', 'mmse')}
    one = toy2d.train_methods(kwargs, jobs=1, threads=1)
    two = toy2d.train_methods(kwargs, jobs=2, threads=1)
    for m in kwargs:
        for p, q in zip(one[m][0].parameters(), two[m][0].parameters()):
            assert torch.equal(p, q)
