"""Forward processes against closed forms, the authors' tables and Monte Carlo moments."""
import math

import numpy as np
import pytest
import torch

from schedules import SCHEDULES, block_average, make_schedule, sample_rgm, vp_coefficients


def np_block_average(x, d):
    """Independent P_d: mean over 2^d x 2^d blocks, replicated back (numpy reshape)."""
    f = 2**d
    B, C, H, W = x.shape
    m = x.reshape(B, C, H // f, f, W // f, f).mean(axis=(3, 5))
    return m.repeat(f, axis=2).repeat(f, axis=3)


def test_authors_k4_table():
    s = make_schedule('d', K=4)
    # The float32 tables that the authors' code computes for K = 4 (read from a run of it).
    assert torch.allclose(s.abar, torch.tensor([1, 0.7223, 0.2805, 0.0586, 0.0066]), atol=1e-4)
    assert torch.allclose(s.sigmabar, torch.tensor([0, 0.6916, 0.9599, 0.9983, 1.0000]), atol=1e-4)
    assert s.abar[0] == 1 and s.sigmabar[0] == 0          # level 0 is exactly clean
    assert s.abar.dtype == torch.float32


@pytest.mark.parametrize('disc', ['original', 'square', 'geometric'])
def test_discretisations_closed_form(disc):
    N, bmin, bmax, eps = 6, 0.1, 20.0, 1e-3
    s = np.arange(N + 1) / N * (1 - eps) + eps
    var = {'original': lambda s: 1 - np.exp(-0.5 * s**2 * (bmax - bmin) - s * bmin),
           'square': lambda s: 1 - np.exp(-0.5 * s**4 * (bmax - bmin) - s**2 * bmin),
           'geometric': None}[disc]
    if disc == 'geometric':    # geometric between the endpoints of 'original' (a documented deviation)
        v = 1 - np.exp(-0.5 * s**2 * (bmax - bmin) - s * bmin)
        var = v[0] * (v[-1] / v[0]) ** (np.arange(N + 1) / N)
    else:
        var = var(s)
    abar2 = (1 - var) / (1 - var[0])                       # abar'_n^2 = abar_n / abar_0
    c = vp_coefficients(N, disc)
    assert np.allclose(c['abar'].numpy()**2, abar2, atol=1e-5)
    assert torch.allclose(c['abar']**2 + c['sigmabar']**2, torch.ones(N + 1), atol=1e-5)
    # one chain step composes the marginals: abar_{n} = a_n abar_{n-1}
    assert torch.allclose(c['abar'][1:], c['a'][1:] * c['abar'][:-1], atol=1e-6)


def test_sr_separated_std_table():
    s = make_schedule('sr', K=7)
    expected = [0, 1.383, 0.692, 1.920, 0.960, 1.997, 0.998, 2.000]   # the authors' code, K = 7
    assert torch.allclose(s.std(torch.arange(8)), torch.tensor(expected), atol=1e-3)


def test_block_average_matches_numpy():
    x = torch.randn(5, 2, 16, 16, dtype=torch.float64)
    d = torch.tensor([0, 1, 2, 3, 4])
    out = block_average(x, d).numpy()
    for i in range(5):
        assert np.allclose(out[i:i + 1], np_block_average(x[i:i + 1].numpy(), int(d[i])))


def test_denoising_marginal_monte_carlo():
    torch.manual_seed(0)
    s = make_schedule('d', K=4)
    x0 = torch.tensor([1.5, -0.5]).expand(200_000, 2)
    for k in range(5):
        x = s.sample(x0, k)
        assert torch.allclose(x.mean(0), s.abar[k] * x0[0], atol=0.01)
        assert torch.allclose(x.std(0), s.sigmabar[k].expand(2), atol=0.01)


@pytest.mark.parametrize('name,K', [('sr', 7), ('sr', 4), ('sr_naive', 3)])
def test_sr_marginal_monte_carlo(name, K):
    torch.manual_seed(0)
    s = make_schedule(name, K=K)
    x0 = torch.rand(1, 1, 16, 16, dtype=torch.float64) * 2 - 1
    n = 20_000
    for k in range(K + 1):
        x = s.sample(x0.expand(n, 1, 16, 16), k)
        d = k // 2 if name == 'sr' else k
        nlev = (k + 1) // 2 if name == 'sr' else k
        mean = s.abar[nlev].item() * np_block_average(x0.numpy(), d)
        # the std of 2^n sigmabar_n eps (sr) or sigmabar_k eps (naive), averaged over 4^d pixels
        std = s.sigmabar[nlev].item() * (2**nlev if name == 'sr' else 1) / 2**d
        se = std / math.sqrt(n)                          # Monte Carlo standard error
        assert np.allclose(x.mean(0).numpy(), mean[0], atol=5 * se + 1e-9)
        assert np.allclose(x.std(0).numpy(), std, atol=5 * se / math.sqrt(2) + 1e-9)
        assert abs(s.std(torch.tensor([k])).item() - std) < 1e-5
        # pixels of one 2^d block are equal; neighbouring blocks are independent
        f = 2**d
        assert torch.equal(x[:, :, :f, :f], x[:, :, :1, :1].expand(-1, -1, f, f))
        if k > 0 and f < 16:
            a, b = x[:, 0, 0, 0], x[:, 0, 0, f]
            assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 0.05


@pytest.mark.parametrize('name,K,side', [('d', 4, 8), ('sr', 7, 32), ('sr', 4, 32), ('sr_naive', 3, 16)])
def test_start_distribution_matches_level_K(name, K, side):
    torch.manual_seed(0)
    s = make_schedule(name, K=K)
    n = 4000
    x_start = s.prior_sample((n, 1, side, side))
    x_K = s.sample(torch.zeros(n, 1, side, side), K)     # level K of (zero-mean) data
    f = 2**s.halvings                                    # same block structure as level K
    std_K = s.std(torch.tensor([K])).item()
    se = std_K / math.sqrt(2 * n * (side // f)**2)       # standard error of a std estimate
    assert abs(x_K.std().item() - std_K) < 5 * se
    assert abs(x_start.std().item() - std_K) < 5 * se
    assert abs(x_start.mean().item()) < 5 * se * math.sqrt(2)
    assert torch.equal(x_start[:, :, :f, :f], x_start[:, :, :1, :1].expand(-1, -1, f, f))
    if name == 'sr' and K == 4:                          # the authors' fixed std 2 is wrong for even K
        assert abs(x_start.std().item() - s.sigmabar[2].item()) < 0.02


@pytest.mark.parametrize('k', [0, 1, 2, 3])
def test_posterior_matches_forward_chain(k):
    """Regress x_k on x_{k+1} along the chain x_{k+1} = a_{k+1} x_k + sqrt(beta_{k+1}) eps."""
    torch.manual_seed(0)
    s = make_schedule('d', K=4)
    n, x0 = 400_000, 0.8
    x_k = s.sample(torch.full((n, 1), x0, dtype=torch.float64), k)
    a, beta = s.a[k + 1].double(), s.beta[k + 1].double()
    x_next = a * x_k + beta.sqrt() * torch.randn_like(x_k)
    X = torch.cat([torch.ones_like(x_next), x_next], 1)
    coef = torch.linalg.lstsq(X, x_k).solution.squeeze()
    resid_var = (x_k - X @ coef[:, None]).var().item()
    c1, c2, v = (c.item() for c in s.posterior_coefficients(torch.tensor([k])))
    assert abs(coef[0].item() - c1 * x0) < 0.01 and abs(coef[1].item() - c2) < 0.01
    assert abs(resid_var - v) < 0.01 * max(v, 1e-2)
    # posterior_sample draws from that Gaussian: its moments given a fixed x_{k+1}
    y = torch.full((n, 1), 0.3)
    draws = s.posterior_sample(torch.full((n, 1), x0), y, k)
    assert abs(draws.mean().item() - (c1 * x0 + c2 * 0.3)) < 0.01
    assert abs(draws.var().item() - v) < 0.01 * max(v, 1e-2) + 1e-6


def test_algorithm3_with_exact_posterior_reproduces_gaussian_data():
    """With data N(0, s0^2) and G drawing x0 from the exact p(x0 | x_{k+1}), every level of
    the sampling chain must have the forward marginal's std sqrt(s0^2 abar_k^2 + sigmabar_k^2)."""
    torch.manual_seed(0)
    s, s0, calls = make_schedule('d', K=4), 0.5, []

    def G(x_next, k, z):                     # exact posterior sampler, with z as its noise
        calls.append(int(k[0]))
        a, sig = s.abar[k + 1][:, None], s.sigmabar[k + 1][:, None]
        gain = s0**2 * a / (a**2 * s0**2 + sig**2)
        var = s0**2 * sig**2 / (a**2 * s0**2 + sig**2)
        return gain * x_next + var.sqrt() * z

    xs = sample_rgm(G, s, (200_000, 1), nz=1, noise_scale=1.0, trajectory=True)
    assert calls == [3, 2, 1, 0]             # G(x_{k+1}, k, z) for k = K-1 .. 0
    for k, x in zip(range(4, -1, -1), xs):
        expected = math.sqrt(s0**2 * s.abar[k]**2 + s.sigmabar[k]**2)
        assert abs(x.std().item() - expected) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match='K'):
        make_schedule('d', K=0)
    with pytest.raises(ValueError, match='unknown forward process'):
        make_schedule('blur')
    with pytest.raises(ValueError, match='discretisation'):
        make_schedule('d', discretisation='cosine')
    s = make_schedule('d', K=4)
    with pytest.raises(ValueError, match='0..4'):
        s.sample(torch.zeros(2, 2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match='0..4'):
        s.sample(torch.zeros(2, 2), -1)
    with pytest.raises(ValueError, match='divisible by 8'):
        make_schedule('sr', K=7).sample(torch.zeros(2, 3, 20, 20), 1)
    with pytest.raises(ValueError, match='divisible by 16'):
        make_schedule('sr_naive', K=4).prior_sample((2, 3, 24, 24))
    with pytest.raises(ValueError, match='images'):
        make_schedule('sr', K=2).sample(torch.zeros(2, 2), 1)


def test_registry_names():
    assert set(SCHEDULES) == {'d', 'sr_naive', 'sr'}
