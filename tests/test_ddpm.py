"""The diffusion baseline on the 'd' process at K = 1000: its tables, the eps-prediction loss, and
DDPM / DDIM sampling driven by exact denoisers of data whose posterior mean is known in closed form."""
import math

import pytest
import torch

import losses
import models
from schedules import ddim_levels, make_schedule, sample_ddim, sample_ddpm

K = 1000
M, S0 = 1.0, 0.5        # column 0 of the data: x0 ~ N(M, S0^2)
P = 0.3                 # column 1: x0 = +1 with probability P, -1 with probability 1 - P


@pytest.fixture(scope='module')
def s():
    return make_schedule('d', K=K)


def exact_eps(s, calls=None):
    """The exact noise predictor E[eps | x_t] = (x_t - abar_t E[x0 | x_t]) / sigmabar_t of the product data
    (column 0 Gaussian, column 1 two points), called like G: eps_net(x_{k+1}, k, None), t = k + 1.

    Gaussian: E[x0 | x_t] = M + abar S0^2 (x_t - abar M) / V,  V = abar^2 S0^2 + sigmabar^2, so
        E[eps | x_t] = sigmabar (x_t - abar M) / V.
    Two points: p(x0 = +-1 | x_t) is proportional to w_+- exp(-(x_t -+ abar)^2 / (2 sigmabar^2)), so the
    log-odds of +1 are logit(P) + 2 abar x_t / sigmabar^2 and
        E[x0 | x_t] = P(+1 | x_t) - P(-1 | x_t) = tanh(abar x_t / sigmabar^2 + logit(P) / 2).
    t >= 1 always, so sigmabar_t >= sigmabar_1 > 0 and the divisions are safe."""
    def eps_net(x, k, z):
        assert z is None and k.dtype == torch.long and k.shape == (x.shape[0],)
        assert not torch.is_grad_enabled()
        assert bool((k == k[0]).all())              # one level for the whole batch
        if calls is not None:
            calls.append(int(k[0]))
        t = int(k[0]) + 1
        a, sig = s.abar[t], s.sigmabar[t]
        eps_gauss = sig * (x[:, :1] - a * M) / (a**2 * S0**2 + sig**2)
        x0_two = torch.tanh(a * x[:, 1:] / sig**2 + 0.5 * math.log(P / (1 - P)))
        return torch.cat([eps_gauss, (x[:, 1:] - a * x0_two) / sig], 1)
    return eps_net


def tables64(s):
    return (v.double() for v in (s.abar, s.sigmabar, s.a, s.beta))


def ddpm_gaussian_law(s):
    """Mean and std of DDPM's output for the Gaussian column, in float64, through Ho's Eq. 11
    (the sampler goes through the posterior with x0_hat instead: the same map):
        x_{t-1} = (x_t - beta_t / sigmabar_t eps_hat) / a_t + sqrt(v_t) n,
        v_t = beta_t sigmabar_{t-1}^2 / sigmabar_t^2,
    with eps_hat = e1 x_t + e0 affine: a linear-Gaussian chain from N(0, 1)."""
    abar, sig, a, beta = tables64(s)
    mu, var = 0.0, 1.0
    for t in range(K, 0, -1):
        V = abar[t]**2 * S0**2 + sig[t]**2
        e1, e0 = sig[t] / V, -sig[t] * abar[t] * M / V
        A, B = (1 - beta[t] / sig[t] * e1) / a[t], -beta[t] / sig[t] * e0 / a[t]
        mu, var = A * mu + B, A**2 * var + beta[t] * sig[t - 1]**2 / sig[t]**2
    return float(mu), float(var.sqrt())


def ddim_gaussian_map(s, levels):
    """DDIM (Eq. 12, eta = 0) on the Gaussian column is affine: x_0 = gain x_K + offset; in float64."""
    abar, sig, _, _ = tables64(s)
    gain, offset = 1.0, 0.0
    for t, t_next in zip(levels[:-1], levels[1:]):
        V = abar[t]**2 * S0**2 + sig[t]**2
        e1, e0 = sig[t] / V, -sig[t] * abar[t] * M / V             # eps_hat = e1 x_t + e0
        # x_{t'} = abar_{t'} (x_t - sigmabar_t eps_hat) / abar_t + sigmabar_{t'} eps_hat
        g1 = abar[t_next] * (1 - sig[t] * e1) / abar[t] + sig[t_next] * e1
        g0 = -abar[t_next] * sig[t] * e0 / abar[t] + sig[t_next] * e0
        gain, offset = g1 * gain, g1 * offset + g0
    return float(gain), float(offset)


# ---- the tables at 1000 levels ----

def test_vp_tables_at_1000_levels(s):
    abar, sig, a, beta = s.abar, s.sigmabar, s.a, s.beta
    assert abar.dtype == torch.float32 and abar.shape == (K + 1,)
    # beta_n = 1 - abar_n^2 / abar_{n-1}^2 = 1 - exp(-int beta(u) du over one step), beta(u) linear (Table 5)
    u = torch.arange(K + 1, dtype=torch.float64) / K * (1 - 1e-3) + 1e-3
    want = 1 - torch.exp(-(u[1:] - u[:-1]) * (0.1 + 19.9 * (u[1:] + u[:-1]) / 2))
    assert torch.allclose(beta[1:].double(), want, rtol=1e-5)
    assert (beta[1:] > 0).all() and 1.2e-4 < beta[1] < 1.4e-4 and 0.019 < beta[-1] < 0.02   # ~DDPM's 1e-4..0.02
    assert abar[0] == 1 and sig[0] == 0                                   # level 0 exactly clean
    assert (abar[1:] < abar[:-1]).all() and (sig[1:] > sig[:-1]).all()
    assert abar[-1] < 0.01 and sig[-1] > 0.9999                           # level K is almost pure noise
    assert torch.allclose(abar**2 + sig**2, torch.ones(K + 1), atol=1e-6)
    # the float32 product of 1000 step scales stays close to the float64 one
    assert torch.allclose(abar.double(), torch.cumprod(torch.sqrt(1 - s.beta.double()), 0), atol=1e-5)
    c1, c2, v = s.posterior_coefficients(torch.arange(K))
    assert all(torch.isfinite(c).all() for c in (c1, c2, v)) and (v >= 0).all()
    assert c2[0] == 0 and v[0] == 0 and abs(c1[0].item() - 1) < 1e-4     # x_0 = x0_hat
    # averaging q(x_k | x_{k+1}, x0) over q(x_{k+1} | x0) gives back q(x_k | x0) = N(abar_k x0, sigmabar_k^2)
    assert torch.allclose(c1 + c2 * abar[1:], abar[:-1], atol=1e-3)
    assert torch.allclose(c2**2 * sig[1:]**2 + v, sig[:-1]**2, atol=1e-5)
    # with x0_hat = (x_{k+1} - sigmabar eps) / abar the posterior mean is Ho's Eq. 11:
    # (x_{k+1} - beta / sigmabar eps) / a (equal up to float32 rounding of the tables, < 1e-3)
    assert torch.allclose(c1 / abar[1:] + c2, 1 / a[1:], rtol=1e-3)
    assert torch.allclose(c1 * sig[1:] / abar[1:], beta[1:] / (a[1:] * sig[1:]), rtol=1e-3)


# ---- the DDIM subsequence ----

@pytest.mark.parametrize('K_,steps', [(1000, 200), (1000, 3), (1000, 7), (10, 4), (10, 10), (7, 1), (1000, 999)])
def test_ddim_levels(K_, steps):
    t = ddim_levels(K_, steps)
    assert len(t) == steps + 1 and t[0] == K_ and t[-1] == 0 and all(isinstance(v, int) for v in t)
    assert all(a > b for a, b in zip(t[:-1], t[1:]))                      # strictly decreasing
    for i, ti in enumerate(reversed(t)):                                   # t_i is i K / S rounded
        assert abs(ti - i * K_ / steps) <= 0.5
    gaps = {a - b for a, b in zip(t[:-1], t[1:])}
    assert gaps <= {K_ // steps, -(-K_ // steps)}                          # evenly spaced


def test_ddim_levels_every_level_and_bad_steps():
    assert ddim_levels(K, K) == list(range(K, -1, -1))
    assert ddim_levels(K, 1) == [K, 0]
    assert ddim_levels(1000, 4) == [1000, 750, 500, 250, 0]
    for bad in (0, -3, K + 1, 2.5, True):
        with pytest.raises(ValueError, match='steps'):
            ddim_levels(K, bad)
    with pytest.raises(ValueError, match='K'):
        ddim_levels(0, 1)


# ---- how the samplers call the network ----

def test_samplers_call_the_network_like_G():
    s, calls, n = make_schedule('d', K=100), [], 8
    net = exact_eps(s, calls)
    xs = sample_ddpm(net, s, (n, 2), generator=torch.Generator().manual_seed(0), trajectory=True)
    assert calls == list(range(99, -1, -1)) and len(xs) == 101              # NFE = K, k = K-1 .. 0
    x = sample_ddpm(net, s, (n, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, xs[-1])                                           # reproducible from the generator
    assert not torch.equal(x, sample_ddpm(net, s, (n, 2), generator=torch.Generator().manual_seed(1)))
    calls.clear()
    xs = sample_ddim(net, s, (n, 2), 4, generator=torch.Generator().manual_seed(0), trajectory=True)
    assert calls == [99, 74, 49, 24] and len(xs) == 5                       # NFE = steps; told t - 1
    assert torch.equal(xs[0], s.prior_sample((n, 2), generator=torch.Generator().manual_seed(0)))
    calls.clear()
    with pytest.raises(ValueError, match='steps'):
        sample_ddim(net, s, (n, 2), 101)
    with pytest.raises(ValueError, match="'d' process"):
        sample_ddpm(net, make_schedule('sr', K=4), (n, 3, 8, 8))
    with pytest.raises(ValueError, match="'d' process"):
        sample_ddim(net, make_schedule('sr_naive', K=4), (n, 3, 16, 16), 2)
    assert calls == []                                                      # refused before any work


# ---- sampling with the exact denoiser ----

def test_ddpm_with_the_exact_denoiser_reproduces_the_data(s):
    n = 20_000
    x = sample_ddpm(exact_eps(s), s, (n, 2), generator=torch.Generator().manual_seed(0))
    # Gaussian column: the chain is linear-Gaussian, its law is N(mu, sd^2) (Eq. 11, float64). It is the
    # data's only as K -> infinity: each reverse step has the posterior variance v but lacks
    # c1^2 Var[x0 | x_{k+1}]; at K = 1000 its std is under 1% low.
    mu, sd = ddpm_gaussian_law(s)
    assert abs(mu - M) < 1e-3 and abs(sd - S0) < 0.01 * S0
    g = x[:, 0].double()
    se = sd / math.sqrt(n)                                  # standard errors of a mean and of a std
    assert abs(g.mean().item() - mu) < 5 * se + 1e-3        # + 1e-3: float32 tables, posterior vs Eq. 11
    assert abs(g.std().item() - sd) < 5 * se / math.sqrt(2) + 1e-3
    # two points: every sample lands on +-1, with the share P at +1
    y = x[:, 1].double()
    assert ((y.abs() - 1).abs() < 1e-3).double().mean() > 0.999
    se = math.sqrt(P * (1 - P) / n)
    assert abs((y > 0).double().mean().item() - P) < 5 * se
    assert abs(y.mean().item() - (2 * P - 1)) < 5 * 2 * se
    assert abs(y.var().item() - 4 * P * (1 - P)) < 5 * 4 * abs(1 - 2 * P) * se + 1e-3   # delta method


def test_ddim_with_the_exact_denoiser_reproduces_the_data(s):
    n, steps, seed = 50_000, 200, 0
    x = sample_ddim(exact_eps(s), s, (n, 2), steps, generator=torch.Generator().manual_seed(seed))
    x_K = s.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed))   # DDIM's start noise
    # Gaussian column: DDIM is a deterministic affine map of the start noise, sample by sample
    gain, offset = ddim_gaussian_map(s, ddim_levels(K, steps))
    assert torch.allclose(x[:, 0].double(), gain * x_K[:, 0].double() + offset, atol=1e-4)
    # ... which approaches the probability-flow map that carries the level-K marginal N(abar_K M, V_K) to
    # the data, x0 = M + S0 (x_K - abar_K M) / sqrt(V_K), with the error of a first-order method: the std
    # is low by about 3 / steps (1.5% at 200 steps, 0.3% at K)
    abar_K = s.abar[-1].item()
    V_K = abar_K**2 * S0**2 + s.sigmabar[-1].item()**2
    gain_ode, offset_ode = S0 / math.sqrt(V_K), M - abar_K * M * S0 / math.sqrt(V_K)   # applied to N(0, 1)
    for S in (steps, K):
        gain_S, offset_S = ddim_gaussian_map(s, ddim_levels(K, S))
        assert abs(gain_S / gain_ode - 1) < 3.5 / S and abs(offset_S - offset_ode) < 1e-3
    # so the samples' moments are the data's, up to 5 standard errors, the start's mismatch (N(0, 1)
    # instead of N(abar_K M, V_K): mean off by abar_K M S0) and that discretisation error
    g = x[:, 0].double()
    se = S0 / math.sqrt(n)
    assert abs(g.mean().item() - M) < 5 * se + abar_K * M * S0
    assert abs(g.std().item() - S0) < 5 * se / math.sqrt(2) + 3.5 / steps * S0
    # two points: every sample lands on +-1, share P at +1. Tolerance: 5 standard errors, plus the
    # start's mismatch: the (monotone) map sends the level-K marginal's upper P-quantile to 0; N(0, 1)
    # instead of that marginal (mean abar_K (2P - 1), std ~1) moves the share by < abar_K |2P - 1| / 2
    y = x[:, 1].double()
    assert ((y.abs() - 1).abs() < 1e-3).double().mean() > 0.999
    se = math.sqrt(P * (1 - P) / n)
    assert abs((y > 0).double().mean().item() - P) < 5 * se + abar_K
    assert abs(y.mean().item() - (2 * P - 1)) < 2 * (5 * se + abar_K)
    assert abs(y.var().item() - 4 * P * (1 - P)) < 4 * abs(1 - 2 * P) * (5 * se + abar_K) + 1e-3


def test_ddim_with_two_steps_is_wrong_for_two_points(s):
    """Levels 1000 -> 500 -> 0: the last step returns E[x0 | x_500], a tanh of x_500 that is not saturated:
    the samples sit between the two points, not on them. (The tests above are sensitive to this.)"""
    n = 20_000
    y = sample_ddim(exact_eps(s), s, (n, 2), 2, generator=torch.Generator().manual_seed(0))[:, 1].double()
    assert ((y.abs() - 1).abs() < 1e-3).double().mean() < 0.5
    assert abs((y > 0).double().mean().item() - P) > 20 * math.sqrt(P * (1 - P) / n)
    assert y.var().item() < 0.5 * 4 * P * (1 - P)


def test_clip_x0():
    s, n, gen = make_schedule('d', K=100), 1000, lambda: torch.Generator().manual_seed(0)
    # the exact denoiser of the two points never leaves [-1, 1]: clamping changes nothing, and DDIM's
    # re-derived eps_hat = (x_t - abar_t x0_hat) / sigmabar_t is the network's own (column 1; the columns
    # go through the samplers independently)
    net = exact_eps(s)
    for sampler in (lambda **kw: sample_ddim(net, s, (n, 2), 50, generator=gen(), **kw),
                    lambda **kw: sample_ddpm(net, s, (n, 2), generator=gen(), **kw)):
        plain, clipped = sampler()[:, 1], sampler(clip_x0=True)[:, 1]
        assert torch.allclose(plain, clipped, atol=1e-4)
    # a predictor of zero noise makes x0_hat = x_t / abar_t, far outside [-1, 1] at high levels
    zero = lambda x, k, z: torch.zeros_like(x)
    x = sample_ddim(zero, s, (n, 2), 20, generator=gen(), clip_x0=True)
    assert x.abs().max() <= 1
    assert sample_ddim(zero, s, (n, 2), 20, generator=gen()).abs().max() > 10
    x = sample_ddpm(zero, s, (n, 2), generator=gen(), clip_x0=True)
    assert x.abs().max() <= 1 + 1e-4                         # x_0 = c1 x0_hat, c1 = 1 up to rounding


# ---- the noise-prediction loss ----

@pytest.mark.parametrize('t', [1, 10, 300, K])
def test_ddpm_loss_exact_predictor_closed_form(s, t):
    """x_t = abar x0 + sigmabar eps with x0 ~ N(M, S0^2) in D dims: eps | x_t is Gaussian with variance
    1 - Cov(eps, x_t)^2 / Var(x_t) = abar^2 S0^2 / V, so E ddpm_loss(E[eps | x_t], eps) = D abar^2 S0^2 / V."""
    torch.manual_seed(t)
    n, D = 100_000, 3
    a, sig = s.abar[t].double(), s.sigmabar[t].double()
    x0, eps = M + S0 * torch.randn(n, D, dtype=torch.float64), torch.randn(n, D, dtype=torch.float64)
    x_t = a * x0 + sig * eps
    V = a**2 * S0**2 + sig**2
    eps_hat = sig * (x_t - a * M) / V                                          # E[eps | x_t]
    post_var = (a**2 * S0**2 / V).item()
    loss = losses.ddpm_loss(eps_hat, eps)
    assert loss.shape == (n,)
    se = post_var * math.sqrt(2 * D / n)                    # each loss is post_var * chi^2_D
    assert abs(loss.mean().item() - D * post_var) < 5 * se
    # a predictor that ignores the data's mean (E[eps | x_t] for M = 0) scores higher by the squared
    # bias, D (sigmabar abar M / V)^2: the cross term averages to zero (E[eps | x_t] is a projection)
    wrong = sig * x_t / V
    excess = (losses.ddpm_loss(wrong, eps) - loss).mean().item()
    bias = (sig * a * M / V).item()
    assert excess > 0 and abs(excess - D * bias**2) < 5 * 2 * bias * math.sqrt(D * post_var / n)
    # x0_hat = (x_t - sigmabar eps_hat) / abar is then the posterior mean E[x0 | x_t], and the eps loss
    # is the MMSE loss on x0 reweighted by (abar / sigmabar)^2
    x0_hat = (x_t - sig * eps_hat) / a
    assert torch.allclose(x0_hat, M + a * S0**2 * (x_t - a * M) / V, atol=1e-6)
    assert torch.allclose(losses.mmse_loss(x0_hat, x0) * (a / sig)**2, loss, rtol=1e-6)


def test_ddpm_loss_bad_shapes():
    with pytest.raises(ValueError, match='same shape'):
        losses.ddpm_loss(torch.zeros(4, 3), torch.zeros(4, 1))


# ---- the baseline end to end: ddpm_step, the training run, sample.py --steps --------------------

def test_ddpm_step_regresses_the_noise_of_the_level_it_draws():
    """With a network that predicts x_{k+1} / sigmabar_{k+1}, the step's loss is computable from its own
    draws (k, then eps): ||eps - x_{k+1} / sigmabar||^2 with x_{k+1} = abar x0 + sigmabar eps."""
    import train_images as ti
    schedule = make_schedule('d', K=1000)
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    w = torch.nn.Parameter(torch.ones(()))

    def G(x_next, k, z):
        assert z is None and k.min() >= 0 and k.max() < 1000
        return w * x_next / schedule.std(k + 1).view(-1, 1, 1, 1)
    opt = torch.optim.SGD([w], lr=0.0)
    torch.manual_seed(3)
    loss = ti.ddpm_step(G, opt, x0, schedule)['ddpm']
    torch.manual_seed(3)
    k = torch.randint(1000, (6,))
    eps = torch.randn_like(x0)
    abar, sigmabar = (v.view(-1, 1, 1, 1) for v in (schedule._table('abar', k + 1), schedule.std(k + 1)))
    expected = (eps - (abar * x0 + sigmabar * eps) / sigmabar).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(loss, expected)


def test_a_ddpm_run_samples_with_ddim_steps_and_rgm_refuses_steps(tmp_path):
    import json
    import sample
    import train_images as ti
    common = ['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--max-steps', '2', '--ckpt-every', '2',
              '--device', 'cpu']
    ti.main(ti.parse_args(common + ['--prior', 'ddpm', '--K', '1000', '--out', str(tmp_path / 'ddpm')]))
    ckpt = ti.checkpoints(tmp_path / 'ddpm' / 'checkpoints')[2]
    sample.main(sample.build_parser().parse_args(['--ckpt', ckpt, '--n', '2', '--steps', '3', '--out',
                                                  str(tmp_path / 's')]))
    summary = json.loads((tmp_path / 's' / 'metrics.json').read_text())
    assert summary['nfe'] == 3 and summary['steps'] == 3 and summary['clip_x0'] is True
    sample.main(sample.build_parser().parse_args(['--ckpt', ckpt, '--n', '2', '--steps', '3', '--no-clip-x0',
                                                  '--out', str(tmp_path / 's2')]))
    assert json.loads((tmp_path / 's2' / 'metrics.json').read_text())['clip_x0'] is False
    ti.main(ti.parse_args(common + ['--out', str(tmp_path / 'rgm')]))
    rgm = ti.checkpoints(tmp_path / 'rgm' / 'checkpoints')[2]
    with pytest.raises(ValueError, match='fixed by its training: drop --steps'):
        sample.main(sample.build_parser().parse_args(['--ckpt', rgm, '--steps', '3', '--out', str(tmp_path / 'r')]))
    assert not (tmp_path / 'r').exists()
    with pytest.raises(ValueError, match='--prior ddpm runs on the Gaussian process d'):
        ti.main(ti.parse_args(common + ['--prior', 'ddpm', '--schedule', 'sr', '--out', str(tmp_path / 'x')]))


@pytest.mark.parametrize('preset, unbounded', [('fashion_ddpm', True), ('fashion_kld_d', False), ('fashion_mmse_d', False)])
def test_only_the_ddpm_network_can_predict_noise_beyond_one(preset, unbounded):
    """eps ~ N(0, I) leaves [-1, 1] a third of the time, so a noise predictor ending in tanh cannot fit it
    (its loss stays >= E[(|eps| - 1)_+^2] = 0.15 per pixel, and it samples noise); the image restorers
    keep the tanh. Built as the trainer builds G, with the output conv set to the constant 3: the output is 3 without
    the tanh, tanh(3) with it."""
    import train_images as ti
    setup_kwargs = ti.configure(ti.parse_args(['--preset', preset, '--device', 'cpu']), 1, torch.device('cpu')).G_kwargs
    G = models.NCSNpp(**setup_kwargs).eval()
    assert setup_kwargs.get('out_tanh', True) is not unbounded
    with torch.no_grad():
        G.conv_out.weight.zero_()
        G.conv_out.bias.fill_(3.0)
        out = G(torch.randn(2, 1, 32, 32), torch.tensor([0, 999]), None if setup_kwargs['nz'] == 0 else torch.randn(2, 32))
    torch.testing.assert_close(out, torch.full_like(out, 3.0 if unbounded else math.tanh(3.0)))


def test_sample_py_clamps_a_ddpm_x0_by_default_and_not_rgm():
    """sample.draw clamps a DDPM's predicted x0 as its authors sample it; clip_x0=False is the exact chain.
    With a network predicting zero noise, x0_hat = x_t / abar_t is far outside [-1, 1]: the clamped chain
    is the library sampler with clip_x0=True, the unclamped one leaves the range. An RGM model's
    sampling does not depend on the flag."""
    import sample
    s = make_schedule('d', K=100)
    zero = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    eps_net = lambda x, k, z: zero(x)                        # noqa: E731
    eps_net.parameters = zero.parameters
    meta, shape, gen = dict(prior='ddpm'), (64, 1, 4, 4), lambda: torch.Generator().manual_seed(0)
    for steps, library in ((10, lambda **kw: sample_ddim(eps_net, s, shape, 10, generator=gen(), **kw)),
                           (None, lambda **kw: sample_ddpm(eps_net, s, shape, generator=gen(), **kw))):
        default = sample.draw(eps_net, s, meta, shape, gen(), steps=steps)
        torch.testing.assert_close(default, library(clip_x0=True))
        assert default.abs().max() <= 1 + 1e-4
        plain = sample.draw(eps_net, s, meta, shape, gen(), steps=steps, clip_x0=False)
        torch.testing.assert_close(plain, library())
        assert plain.abs().max() > 10
    rgm = dict(prior='kld', nz=0, posterior=False)
    torch.testing.assert_close(sample.draw(eps_net, s, rgm, shape, gen()),
                               sample.draw(eps_net, s, rgm, shape, gen(), clip_x0=False))
    args = sample.build_parser().parse_args(['--ckpt', 'x.pt'])
    assert args.no_clip_x0 is False
    assert sample.build_parser().parse_args(['--ckpt', 'x.pt', '--no-clip-x0']).no_clip_x0
