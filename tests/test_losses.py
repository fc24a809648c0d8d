"""Fidelity and priors against hand-written formulas, closed forms and known limits."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import losses
from schedules import make_schedule


def np_block_mean(x, d):
    f = 2**d
    B, C, H, W = x.shape
    return x.reshape(B, C, H // f, f, W // f, f).mean(axis=(3, 5))


# ---- fidelity ----

def test_fidelity_denoising_closed_form():
    torch.manual_seed(0)
    s = make_schedule('d', K=4)
    x0_hat, x_next = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    k = torch.tensor([0, 1, 2, 3, 0, 3])
    got = losses.fidelity(x_next, x0_hat, k, s)
    for i in range(6):
        a, sig = s.abar[k[i] + 1], s.sigmabar[k[i] + 1]
        want = 0.5 * ((x_next[i] - a * x0_hat[i])**2).sum() / sig**2
        assert torch.allclose(got[i], want, rtol=1e-5)


def test_fidelity_sr_counts_each_low_res_pixel_4_to_the_d():
    """The authors' SR fidelity, summed over the full-size image, equals 4^d times the
    Gaussian fidelity of the low-resolution observation (documented in schedules.py)."""
    torch.manual_seed(0)
    s = make_schedule('sr', K=7)
    x0_hat = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    k = torch.tensor([0, 2, 3, 6])                        # target levels; observations at k + 1
    x_next = s.sample(torch.randn_like(x0_hat), k + 1)
    got = losses.fidelity(x_next, x0_hat, k, s)
    for i in range(4):
        kn = int(k[i]) + 1
        n, d = (kn + 1) // 2, kn // 2
        y_low = np_block_mean(x_next[i:i + 1].numpy(), d)      # x_next is constant on blocks
        mean_low = s.abar[n].item() * np_block_mean(x0_hat[i:i + 1].numpy(), d)
        std = s.sigmabar[n].item() * 2**n / 2**d
        want = 4**d * 0.5 * (((y_low - mean_low) / std)**2).sum()
        assert abs(got[i].item() - want) < 1e-8 * max(1, want)


def test_posterior_fidelity_is_the_forward_step_likelihood():
    torch.manual_seed(0)
    s = make_schedule('d', K=4)
    x_k_hat, x_next = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    k = torch.tensor([0, 1, 2, 3, 1])
    a, beta = s.a[k + 1].double()[:, None], s.beta[k + 1].double()[:, None]
    nll = -torch.distributions.Normal(a * x_k_hat, beta.sqrt()).log_prob(x_next).sum(1)
    const = 0.5 * math.log(2 * math.pi) * 2 + 0.5 * torch.log(beta).squeeze(1) * 2
    assert torch.allclose(losses.posterior_fidelity(x_next, x_k_hat, k, s), nll - const, rtol=1e-6)


# ---- KLD ----

class Linear(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x, k):
        return x @ self.w


class Quadratic(nn.Module):
    """D(x) = a/2 ||x||^2: grad_x D = a x, so R1 = a^2 ||x||^2."""
    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x, k):
        return 0.5 * self.a * x.pow(2).sum(1), x         # (logit, features), like image D's


def test_kld_terms():
    torch.manual_seed(0)
    D = Linear([0.5, -2.0])
    x, x_hat, k = torch.randn(8, 2), torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    kld = losses.KLD(r1_gamma=0.0)
    assert torch.allclose(kld.generator_loss(D, x_hat, k), -(x_hat @ D.w))          # g = -D
    # softplus(-D) - softplus(D) = -D: the generator term is the KL integrand
    logit = x_hat @ D.w
    assert torch.allclose(nn.functional.softplus(-logit) - nn.functional.softplus(logit), -logit, atol=1e-6)
    loss, r1 = kld.discriminator_loss(D, x, x_hat, k)
    want = nn.functional.softplus(-(x @ D.w)).mean() + nn.functional.softplus(x_hat @ D.w).mean()
    assert torch.allclose(loss, want) and r1 == 0


def test_r1_known_gradient_and_lazy_schedule():
    torch.manual_seed(0)
    D = Quadratic(1.5)
    x, x_hat, k = torch.randn(8, 3), torch.randn(8, 3), torch.zeros(8, dtype=torch.long)
    kld = losses.KLD(r1_gamma=0.4, lazy_reg=3)
    loss0, _ = losses.KLD(r1_gamma=0.0).discriminator_loss(D, x, x_hat, k)
    loss, r1 = kld.discriminator_loss(D, x, x_hat, k, step=3)
    r1_exact = (1.5**2 * x.pow(2).sum(1)).mean()
    assert torch.allclose(r1, r1_exact, rtol=1e-5)
    assert torch.allclose(loss, loss0 + 0.2 * r1_exact, rtol=1e-5)
    # double backward: d(R1)/da = 2 a ||x||^2 reaches the discriminator's parameter
    D.a.grad = None
    loss.backward()
    g_base, = torch.autograd.grad(loss0, D.a)
    assert torch.allclose(D.a.grad - g_base, 0.2 * 2 * 1.5 * x.pow(2).sum(1).mean(), rtol=1e-4)
    skipped, r1_skipped = kld.discriminator_loss(D, x, x_hat, k, step=4)   # not a multiple of 3
    assert torch.allclose(skipped, loss0) and r1_skipped == 0


# ---- MMD ----

def mmd2_reference(x, y, bw):
    def ks(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * s * s)) for s in bw).mean()
    return ks(x, x) + ks(y, y) - 2 * ks(x, y)


def test_mmd_matches_direct_formula_and_gradient():
    torch.manual_seed(0)
    mmd = losses.MMD(chunk=7)                               # several row blocks
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (torch.randn(30, 3, dtype=torch.float64) + 0.3).requires_grad_()
    assert abs(mmd.mmd2(x, y).item() - mmd2_reference(x.numpy(), y.detach().numpy(), [0.1, 0.5, 1, 2, 10])) < 1e-10
    assert torch.autograd.gradcheck(lambda a, b: mmd.mmd2(a, b), (x.clone().requires_grad_(), y))


def test_mmd_zero_for_equal_sets_and_grows_with_shift():
    torch.manual_seed(0)
    mmd = losses.MMD(eps=1e-8)
    x = torch.randn(500, 2)
    assert mmd(x, x).item() == pytest.approx(1e-4, rel=1e-3)        # sqrt(0 + eps)
    values = [mmd(x, x + s).item() for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(values, values[1:]))


def test_mmd_gaussian_closed_form():
    """E k_s(x, y) for x ~ N(m1, v I_d), y ~ N(m2, v I_d) is (s^2 / (s^2 + 2v))^{d/2} exp(-|m1 - m2|^2 / (2 (s^2 + 2v)))."""
    torch.manual_seed(0)
    n, reps, dim, v, bw = 2000, 8, 2, 0.25, (0.5, 1.0, 2.0)
    shift = torch.tensor([0.6, 0.0], dtype=torch.float64)

    def e(delta2):
        return sum((s**2 / (s**2 + 2 * v))**(dim / 2) * math.exp(-delta2 / (2 * (s**2 + 2 * v))) for s in bw)
    exact = 2 * e(0.0) - 2 * e(float(shift @ shift))
    bias = 2 * (len(bw) - e(0.0)) / n                       # the biased estimator keeps k(x_i, x_i)
    mmd = losses.MMD(bandwidths=bw)
    est = np.mean([mmd.mmd2(math.sqrt(v) * torch.randn(n, dim, dtype=torch.float64),
                            math.sqrt(v) * torch.randn(n, dim, dtype=torch.float64) + shift).item()
                   for _ in range(reps)])
    assert abs(est - bias - exact) < 0.02                   # ~4 standard errors; exact = 0.363


# ---- DSWD ----

def test_sliced_wasserstein_closed_form():
    torch.manual_seed(0)
    x = torch.randn(200, 2, dtype=torch.float64)
    c = torch.tensor([0.7, -0.2], dtype=torch.float64)
    theta = torch.nn.functional.normalize(torch.randn(5, 2, dtype=torch.float64), dim=1)
    # a shift moves every sorted projection by c . theta: SW_2^2 = mean_l n (c . theta_l)^2
    want = math.sqrt((200 * (theta @ c) ** 2).mean().item())
    assert losses.sliced_wasserstein(x, x + c, theta).item() == pytest.approx(want, rel=1e-9)
    want_1 = (200 * (theta @ c).abs()).mean().item()                     # SW_1 = mean_l n |c . theta_l|
    assert losses.sliced_wasserstein(x, x + c, theta, p=1).item() == pytest.approx(want_1, rel=1e-9)
    assert losses.sliced_wasserstein(x, x[torch.randperm(200)], theta).item() == pytest.approx(0, abs=1e-5)


class Identity(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()

    def forward(self, theta):
        t = self.linear(theta)
        return t / t.norm(dim=1, keepdim=True)


def test_dswd_learns_directions_that_separate_the_sets():
    torch.manual_seed(0)
    x = torch.randn(300, 2)
    y = x + torch.tensor([1.0, 0.0])                    # differ along e1 only
    dswd = losses.DSWD(Identity(2), num_projections=10, inner_steps=200, C=0.1, lr=1e-2)
    theta = dswd.directions(2, 'cpu')
    before = losses.sliced_wasserstein(x, y, theta).item()
    dswd.fit(x, y, theta)
    after = losses.sliced_wasserstein(x, y, dswd.transform(theta)).item()
    assert after > before and after > 0.9 * math.sqrt(300)   # the maximum is sqrt(n) |shift|
    assert dswd(x, x).item() == pytest.approx(0, abs=1e-5)           # and no NaN from the root at 0
    assert all(torch.isfinite(p).all() for p in dswd.transform.parameters())
    value = dswd(x, y.requires_grad_())
    value.backward()
    assert value.item() >= 0 and y.grad.abs().sum() > 0


def test_mmse_loss_minimiser_is_the_mean():
    x0 = torch.tensor([[-1.0], [1.0], [3.0]])
    cands = torch.linspace(-2, 4, 601)
    risk = torch.stack([losses.mmse_loss(c.expand(3, 1), x0).mean() for c in cands])
    assert cands[risk.argmin()].item() == pytest.approx(1.0, abs=1e-6)


def test_registry():
    assert set(losses.PRIORS) == {'kld', 'mmd', 'dswd'}
