"""Plug-and-play restoration (pnp.py) against independent answers, no trained model needed:
every SVD operator against an explicit dense matrix and numpy's SVD / pinv / solve, the prox
against its closed forms, DRS against the exact posterior of a Gaussian prior with its Wiener
denoiser, the proximal-point and oracle limits, the RGM denoiser's call sequence, PSNR/SSIM on
known values, and the command line end to end with a tiny untrained NCSN++."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import generator_parity
import models
import pnp
import schedules

DT = torch.float64
OPERATORS = [('denoise', (3, 4, 4)), ('sr2', (3, 4, 4)), ('sr2', (3, 8, 8)), ('sr4', (3, 8, 8)),
             ('sr2', (2, 4, 6)), ('color', (3, 4, 4)), ('color', (3, 8, 8)), ('inpaint', (3, 4, 4))]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def up(y, f):
    return y.repeat_interleave(f, -2).repeat_interleave(f, -1)


def reference_H(task, x):
    """H from its definition (Appendix B.4), not through the SVD."""
    if task.startswith('sr'):
        return F.avg_pool2d(x, int(task[2:]))
    if task == 'color':
        return x.mean(1, keepdim=True)
    if task == 'inpaint':
        return x.flatten(1)[:, pnp.random_mask(x.shape[1:]).expand(x.shape[1:]).flatten()]
    return x


def dense(op):
    """H, V, U as explicit matrices, column i = the map applied to the unit vector e_i."""
    eye_x = torch.eye(op.D, dtype=DT).reshape(op.D, *op.x_shape)
    eye_y = torch.eye(op.m, dtype=DT).reshape(op.m, *op.y_shape)
    H = op.H(eye_x).reshape(op.D, op.m).T
    V = op.V(torch.eye(op.D, dtype=DT)).reshape(op.D, op.D).T
    Vt = op.Vt(eye_x).T
    U = op.U(torch.eye(op.m, dtype=DT)).reshape(op.m, op.m).T
    Ut = op.Ut(eye_y).T
    return H.numpy(), V.numpy(), Vt.numpy(), U.numpy(), Ut.numpy()


def flat(x):
    return x.reshape(x.shape[0], -1).numpy()


# ----------------------------------------------------------------------------
# Operators against dense matrices .

@pytest.mark.parametrize('task,shape', OPERATORS)
def test_operator_is_its_definition_and_adjoint(task, shape):
    op, x, u = pnp.make_operator(task, shape), rand(5, *shape), None
    assert torch.allclose(op.H(x), reference_H(task, x).reshape(5, *op.y_shape), atol=1e-14)
    H = dense(op)[0]
    u = rand(5, *op.y_shape, seed=1)
    assert np.allclose(flat(op.Ht(u)), flat(u) @ H, atol=1e-14)                       # H^T = H_dense^T
    assert torch.allclose((op.H(x) * u).flatten(1).sum(1), (x * op.Ht(u)).flatten(1).sum(1), atol=1e-12)


@pytest.mark.parametrize('task,shape', OPERATORS)
def test_svd_factors_reproduce_H(task, shape):
    op = pnp.make_operator(task, shape)
    H, V, Vt, U, Ut = dense(op)
    assert np.allclose(V.T @ V, np.eye(op.D), atol=1e-13) and np.allclose(V @ V.T, np.eye(op.D), atol=1e-13)
    assert np.allclose(U.T @ U, np.eye(op.m), atol=1e-13)
    assert np.allclose(Vt, V.T, atol=1e-14) and np.allclose(Ut, U.T, atol=1e-14)
    S = np.zeros((op.m, op.D))
    S[:, :op.m] = np.diag(op.s.numpy())                                                # diag(s) with add_zeros
    assert np.allclose(U @ S @ V.T, H, atol=1e-14)
    expected = {'denoise': 1.0, 'color': 3 ** -0.5, 'inpaint': 1.0}.get(task) or 1 / int(task[2:])
    assert op.m == np.linalg.matrix_rank(H) and np.allclose(op.s.numpy(), expected)
    assert np.allclose(np.sort(op.s.numpy()), np.sort(np.linalg.svd(H, compute_uv=False)), atol=1e-13)


@pytest.mark.parametrize('task,shape', OPERATORS)
def test_pinv_is_moore_penrose(task, shape):
    op = pnp.make_operator(task, shape)
    H = dense(op)[0]
    y = rand(4, *op.y_shape)
    P = flat(op.pinv(torch.eye(op.m, dtype=DT).reshape(op.m, *op.y_shape))).T                # (D, m)
    assert np.allclose(P, np.linalg.pinv(H), atol=1e-13)
    assert np.allclose(H @ P @ H, H, atol=1e-13) and np.allclose(P @ H @ P, P, atol=1e-13)   # Penrose 1, 2
    assert np.allclose(H @ P, (H @ P).T, atol=1e-13) and np.allclose(P @ H, (P @ H).T, atol=1e-13)
    if task.startswith('sr'):                                                                # closed forms
        f = int(task[2:])
        assert torch.allclose(op.pinv(y), up(y, f)) and torch.allclose(op.Ht(y), up(y, f) / f**2)
    if task == 'color':
        assert torch.allclose(op.pinv(y), y.repeat(1, 3, 1, 1)) and torch.allclose(op.Ht(y), y.repeat(1, 3, 1, 1) / 3)


def prox_closed_form(task, z, y, g):
    """(inpainting: kept pixels as denoising, missing ones untouched)."""
    if task == 'denoise':
        return (z + g * y) / (1 + g)
    if task.startswith('sr'):
        f = int(task[2:])
        avg = F.avg_pool2d(z, f)
        return z - up(avg, f) + up((avg + g / f**2 * y) / (1 + g / f**2), f)
    if task == 'color':
        m = z.mean(1, keepdim=True)
        return z - m + (m + g / 3 * y) / (1 + g / 3)
    keep = pnp.random_mask(z.shape[1:]).expand(z.shape[1:]).flatten()
    u = z.flatten(1).clone()
    u[:, keep] = (u[:, keep] + g * y) / (1 + g)
    return u.reshape(z.shape)


@pytest.mark.parametrize('task,shape', OPERATORS)
@pytest.mark.parametrize('lam', [0.05, 1.0, 20.0])
def test_prox_against_dense_solve_and_closed_form(task, shape, lam):
    op = pnp.make_operator(task, shape)
    H = dense(op)[0]
    z, y = rand(3, *shape), rand(3, *op.y_shape, seed=1)
    u = op.prox(z, y, lam)
    solve = np.linalg.solve(np.eye(op.D) + lam * H.T @ H, (flat(z) + lam * flat(y) @ H).T).T
    assert np.allclose(flat(u), solve, atol=1e-12)
    assert torch.allclose(u, prox_closed_form(task, z, y, lam), atol=1e-12)
    residual = (u - z) + lam * op.Ht(op.H(u) - y)                                # optimality condition
    assert residual.abs().max() < 1e-12


@pytest.mark.parametrize('task,shape', OPERATORS)
def test_prox_limits_and_firm_nonexpansiveness(task, shape):
    op = pnp.make_operator(task, shape)
    z, y, b = rand(3, *shape), rand(3, *op.y_shape, seed=1), rand(3, *shape, seed=2)
    assert torch.allclose(op.prox(z, y, 1e-12), z, atol=1e-10)                               # lam -> 0
    u = op.prox(z, y, 1e9)                                                                   # lam -> inf
    assert torch.allclose(u, z + op.pinv(y - op.H(z)), atol=1e-7) and torch.allclose(op.H(u), y, atol=1e-7)
    d = op.prox(z, y, 2.0) - op.prox(b, y, 2.0)
    assert (d.square().flatten(1).sum(1) <= (d * (z - b)).flatten(1).sum(1) + 1e-12).all()


def test_colour_prox_keeps_the_null_space_part():
    """The thin-V trap: a prox through the row space only would lose the chroma z - mean_c z."""
    op = pnp.make_operator('color', (3, 8, 8))
    z, y = rand(2, 3, 8, 8), rand(2, 1, 8, 8, seed=1)
    u = op.prox(z, y, 5.0)
    assert torch.allclose(u - u.mean(1, keepdim=True), z - z.mean(1, keepdim=True), atol=1e-14)
    assert (z - z.mean(1, keepdim=True)).abs().max() > 0.5


def test_operator_errors():
    with pytest.raises(ValueError, match='divisible by 4'):
        pnp.make_operator('sr4', (3, 30, 30))
    with pytest.raises(ValueError, match='colour'):
        pnp.make_operator('color', (1, 8, 8))
    with pytest.raises(ValueError, match='unknown task'):
        pnp.make_operator('deblur9', (3, 8, 8))
    with pytest.raises(ValueError, match='built for images'):
        pnp.make_operator('sr2', (3, 8, 8)).H(rand(1, 3, 4, 4))


# ----------------------------------------------------------------------------
# DRS on problems with exact answers .

def gaussian_problem(task, shape=(3, 4, 4), sigma=0.5, sigma_y=0.2):
    """Prior N(mu, Sigma), its Wiener denoiser at noise sigma, an observation y and the posterior mean."""
    op = pnp.make_operator(task, shape)
    H = torch.from_numpy(dense(op)[0])
    A = rand(op.D, op.D, seed=3)
    Sigma = A @ A.T / op.D + 0.1 * torch.eye(op.D, dtype=DT)
    mu = 0.3 * rand(op.D, seed=4)
    W = Sigma @ torch.linalg.inv(Sigma + sigma**2 * torch.eye(op.D, dtype=DT))           # Sigma (Sigma + sigma^2 I)^-1
    y = (rand(2, op.D, seed=5) @ H.T + sigma_y * rand(2, op.m, seed=6)).reshape(2, *op.y_shape)
    yf = y.reshape(2, -1)
    post = mu + (yf - mu @ H.T) @ torch.linalg.solve(H @ Sigma @ H.T + sigma_y**2 * torch.eye(op.m, dtype=DT), H @ Sigma).reshape(op.m, op.D)
    wiener = lambda x, j: (mu + (x.reshape(2, -1) - mu) @ W.T).reshape(x.shape)
    return op, H, y, mu, W, post.reshape(2, *shape), wiener, sigma**2 / sigma_y**2


@pytest.mark.parametrize('task', ['denoise', 'sr2', 'color', 'inpaint'])
def test_drs_gaussian_prior_gives_posterior_mean(task):
    op, H, y, mu, W, post, wiener, lam = gaussian_problem(task)
    it = pnp.drs(y, op, wiener, M=300, J=1, alpha=1.0, lam=lam, return_iterate='all')
    assert (it['y'] - post).abs().max() < 1e-10 and (it['prox'] - post).abs().max() < 1e-10
    offset = post - lam * op.Ht(op.H(post) - y)                   # x* = y* - lam H^T (H y* - y_obs)
    assert (it['x'] - offset).abs().max() < 1e-10
    assert (it['x'] - post).abs().max() > 1e-3                    # the DRS variable itself is off
    assert torch.equal(pnp.drs(y, op, wiener, M=300, alpha=1.0, lam=lam), it['x'])   # default: x


def test_drs_relaxed_gaussian_limit():
    """alpha < 1: the limit minimises lam/2 ||Hx - y||^2 + 1/2 (x - mu)^T Q (x - mu), Q = [(1-a) I + a W]^-1 - I."""
    op, H, y, mu, W, post, wiener, lam = gaussian_problem('sr2')
    a, I = 0.3, torch.eye(op.D, dtype=DT)
    Q = torch.linalg.inv((1 - a) * I + a * W) - I
    limit = torch.linalg.solve(lam * H.T @ H + Q, (lam * y.reshape(2, -1) @ H + mu @ Q).T).T.reshape(post.shape)
    it = pnp.drs(y, op, wiener, M=2000, J=1, alpha=a, lam=lam, return_iterate='all')
    assert (it['y'] - limit).abs().max() < 1e-10 and (it['prox'] - limit).abs().max() < 1e-10


@pytest.mark.parametrize('task', ['denoise', 'sr4', 'color'])
def test_drs_isotropic_prior_image_size_closed_form(task):
    """Sigma = s^2 I on 3x32x32 images: mu_post = mu + s^2 / (s^2 + n sigma_y^2) H^+ (y - H mu), n = 1, f^2 or 3."""
    op = pnp.make_operator(task, (3, 32, 32))
    s2, sigma2, sigma_y = 0.25, 0.1, 0.1
    mu, y = 0.2 * rand(1, 3, 32, 32), op.H(rand(1, 3, 32, 32, seed=1)) + sigma_y * rand(1, *op.y_shape, seed=2)
    n = {'denoise': 1, 'sr4': 16, 'color': 3}[task]
    post = mu + s2 / (s2 + n * sigma_y**2) * op.pinv(y - op.H(mu))
    wiener = lambda x, j: mu + s2 / (s2 + sigma2) * (x - mu)
    out = pnp.drs(y, op, wiener, M=200, J=2, alpha=1.0, lam=sigma2 / sigma_y**2, return_iterate='prox')
    assert (out - post).abs().max() < 1e-12


@pytest.mark.parametrize('task', ['sr2', 'color', 'inpaint'])
def test_identity_denoiser_is_the_proximal_point_method(task):
    """D = I: x_k = P(x_{k-1}); per SVD coordinate c_k = (c_0 - yhat/s)(1 + lam s^2)^-k + yhat/s (numpy's SVD)."""
    op = pnp.make_operator(task, (3, 4, 4))
    H = dense(op)[0]
    x0, y, lam, steps = rand(2, 3, 4, 4), rand(2, *op.y_shape, seed=1), 0.7, 3 * 2
    U, s, Vt = np.linalg.svd(H)
    c0, yhat = flat(x0) @ Vt.T, flat(y) @ U
    c = c0.copy()
    c[:, :len(s)] = (c0[:, :len(s)] - yhat / s) * (1 + lam * s**2) ** -steps + yhat / s
    out = pnp.drs(y, op, lambda x, j: x, x_init=x0, M=3, J=2, alpha=0.4, lam=lam)
    assert np.allclose(flat(out), c @ Vt, atol=1e-13)
    far = pnp.drs(y, op, lambda x, j: x, x_init=x0, M=400, alpha=0.4, lam=lam)
    assert torch.allclose(far, x0 - op.pinv(op.H(x0)) + op.pinv(y), atol=1e-12)


@pytest.mark.parametrize('task', ['sr2', 'color'])
def test_oracle_denoiser(task):
    """D(v) = x_true: the limit is (lam H^T H + c I)^-1 (lam H^T y + c x_true), c = alpha / (1 - alpha);
    with noiseless data it is x_true itself."""
    op = pnp.make_operator(task, (3, 4, 4))
    H = torch.from_numpy(dense(op)[0])
    x_true, lam, a = rand(2, 3, 4, 4), 0.5, 0.2
    y = op.H(x_true) + 0.1 * rand(2, *op.y_shape, seed=1)
    oracle = lambda x, j: x_true
    c = a / (1 - a)
    limit = torch.linalg.solve(lam * H.T @ H + c * torch.eye(op.D, dtype=DT), (lam * y.reshape(2, -1) @ H + c * x_true.reshape(2, -1)).T)
    it = pnp.drs(y, op, oracle, M=400, alpha=a, lam=lam, return_iterate='all')
    assert np.allclose(flat(it['prox']), limit.T.numpy(), atol=1e-12) and np.allclose(flat(it['y']), limit.T.numpy(), atol=1e-12)
    x = pnp.drs(op.H(x_true), op, oracle, M=400, alpha=a, lam=lam)
    assert (x - x_true).abs().max() < 1e-12
    assert pnp.psnr(pnp.to_unit(x), pnp.to_unit(x_true)).min() > 200


def test_drs_stationarity_with_any_denoiser():
    """A random CNN as D: every prox output obeys its optimality condition, and lam -> inf fits the data."""
    torch.manual_seed(0)
    cnn = torch.nn.Conv2d(3, 3, 3, padding=1).double()
    D = lambda x, j: torch.tanh(cnn(x))
    op = pnp.make_operator('sr2', (3, 8, 8))
    y = op.H(rand(2, 3, 8, 8))
    it = pnp.drs(y, op, D, M=3, J=2, alpha=0.5, lam=2.0, return_iterate='all')
    x_prev = it['x'] - it['prox'] + it['y']                                  # x before the last update
    residual = it['prox'] - (2 * it['y'] - x_prev) + 2.0 * op.Ht(op.H(it['prox']) - y)
    assert residual.abs().max() < 1e-12
    z = pnp.drs(y, op, D, M=3, alpha=0.5, lam=1e8, return_iterate='prox')
    assert (op.H(z) - y).abs().max() < 1e-7


def test_drs_argument_errors():
    op = pnp.make_operator('denoise', (1, 4, 4))
    with pytest.raises(ValueError, match='return_iterate'):
        pnp.drs(rand(1, 1, 4, 4), op, lambda x, j: x, return_iterate='z')
    with pytest.raises(ValueError, match='M and J'):
        pnp.drs(rand(1, 1, 4, 4), op, lambda x, j: x, M=0)


# ----------------------------------------------------------------------------
# The RGM denoiser: G(forward(x, j), j - 1, z).

class Recorder:
    """A forward process and a generator that log their calls; G undoes the forward mean."""

    def __init__(self, K=4, nz=3):
        self.schedule, self.nz, self.calls = schedules.make_schedule('d', K), nz, []

    def sample(self, x, k, noise=None, noise_scale=1.0):
        self.calls.append(('forward', k.tolist(), noise_scale))
        return self.schedule.sample(x, k, noise=noise, noise_scale=noise_scale)

    def G(self, x_next, k, z):
        self.calls.append(('G', k.tolist(), tuple(z.shape)))
        return x_next / self.schedule.abar[k + 1].view(-1, 1, 1, 1).to(x_next) + 0.01 * z.mean(1).view(-1, 1, 1, 1)


def test_rgm_denoiser_call_sequence():
    rec = Recorder()
    op = pnp.make_operator('sr2', (3, 8, 8))
    pnp.drs(op.H(rand(2, 3, 8, 8)), op, pnp.rgm_denoiser(rec.G, rec, rec.nz), M=2, J=3)
    expected = [c for _ in range(2) for j in (3, 2, 1) for c in [('forward', [j, j], 0.99), ('G', [j - 1, j - 1], (2, 3))]]
    assert rec.calls == expected


def test_rgm_denoiser_reproducible_and_batch_independent():
    rec, op = Recorder(), pnp.make_operator('color', (3, 8, 8))
    y = op.H(rand(3, 3, 8, 8).float())
    run = lambda y, seed, scale: pnp.drs(y, op, pnp.rgm_denoiser(rec.G, rec, rec.nz, scale, torch.Generator().manual_seed(seed)), M=3, J=2)
    assert torch.equal(run(y, 7, 0.99), run(y, 7, 0.99)) and not torch.equal(run(y, 7, 0.99), run(y, 8, 0.99))
    rec.nz = 0                                            # no z, no noise: deterministic, per sample
    rec.G = lambda x_next, k, z: x_next / rec.schedule.abar[k + 1].view(-1, 1, 1, 1)
    together = run(y, 0, 0.0)
    assert torch.allclose(together, torch.cat([run(y[i:i + 1], 0, 0.0) for i in range(3)]), atol=1e-6)
    # With no noise G undoes the forward mean exactly: DRS with the identity denoiser.
    assert torch.allclose(together, pnp.drs(y, op, lambda x, j: x, M=3, J=2), atol=1e-5)


# ----------------------------------------------------------------------------
# Noise units and metrics.

def test_noise_units():
    assert pnp.sigma_to_unit(255) == 2.0 and pnp.sigma_to_unit(25) == pytest.approx(50 / 255)
    x = torch.zeros(4, 3, 64, 64)                                        # mid-gray
    op = pnp.make_operator('denoise', (3, 64, 64))
    y = pnp.degrade(x, op, pnp.sigma_to_unit(10), torch.Generator().manual_seed(0))
    assert y.std().item() == pytest.approx(20 / 255, rel=0.01)
    noisy = pnp.psnr(pnp.to_unit(y), pnp.to_unit(x)).mean().item()
    assert noisy == pytest.approx(20 * math.log10(255 / 10), abs=0.1)    # 28.13 dB


def test_psnr_known_values():
    x = 0.9 * torch.rand(2, 3, 16, 16, dtype=DT)
    assert torch.isinf(pnp.psnr(x, x)).all()
    assert torch.allclose(pnp.psnr(x, x + 0.1), torch.full((2,), 20.0, dtype=DT))
    a, b = 0.8 * rand(2, 3, 16, 16).clamp(-1, 1), 0.8 * rand(2, 3, 16, 16, seed=1).clamp(-1, 1)
    gap = pnp.psnr(pnp.to_unit(a), pnp.to_unit(b)) - pnp.psnr(a, b)     # [-1, 1] with peak 1 is 6.02 dB low
    assert torch.allclose(gap, torch.full((2,), 20 * math.log10(2), dtype=DT))
    assert torch.equal(pnp.to_unit(torch.tensor([-3.0, 0.0, 3.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_ssim_known_values():
    x = torch.rand(2, 3, 16, 16, dtype=DT)
    assert torch.allclose(pnp.ssim(x, x), torch.ones(2, dtype=DT))
    C1 = 0.01**2
    a, b = torch.full((1, 3, 12, 12), 0.3, dtype=DT), torch.full((1, 3, 12, 12), 0.7, dtype=DT)
    assert pnp.ssim(a, b).item() == pytest.approx((2 * 0.3 * 0.7 + C1) / (0.3**2 + 0.7**2 + C1), rel=1e-12)
    with pytest.raises(ValueError, match='11x11'):
        pnp.ssim(x[..., :10, :10], x[..., :10, :10])


def test_ssim_constant_shift_by_hand():
    """ref = x + c: contrast and structure are 1, SSIM = mean of (2 mu (mu + c) + C1) / (mu^2 + (mu + c)^2 + C1),
    mu the Gaussian-window mean at each valid position, summed by hand."""
    x, c, C1 = 0.6 * torch.rand(1, 2, 13, 14, dtype=DT), 0.25, 0.01**2
    g = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5**2))
    w = np.outer(g, g) / g.sum() ** 2
    values = []
    for ch in range(2):
        for i in range(13 - 10):
            for j in range(14 - 10):
                mu = (w * x[0, ch, i:i + 11, j:j + 11].numpy()).sum()
                values.append((2 * mu * (mu + c) + C1) / (mu**2 + (mu + c) ** 2 + C1))
    assert pnp.ssim(x, x + c).item() == pytest.approx(np.mean(values), rel=1e-12)


def test_ssim_matches_skimage_if_installed():
    metrics = pytest.importorskip('skimage.metrics')
    x, r = torch.rand(1, 3, 24, 24, dtype=DT), torch.rand(1, 3, 24, 24, dtype=DT)
    theirs = metrics.structural_similarity(x[0].numpy(), r[0].numpy(), data_range=1.0, channel_axis=0,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert pnp.ssim(x, r).item() == pytest.approx(theirs, abs=1e-6)


def test_paper_settings():
    assert pnp.paper_settings('sr2', 32)[0] == dict(M=5, lam=0.2, alpha=0.2, J=1)
    assert pnp.paper_settings('sr4', 32)[0] == dict(M=10, lam=0.1, alpha=0.2, J=1)
    assert pnp.paper_settings('sr4', 256)[0] == dict(M=40, lam=10, alpha=0.05, J=1)
    assert pnp.paper_settings('color', 256)[0] == dict(M=20, lam=5, alpha=0.5, J=2)
    assert 'not in Table 6' in pnp.paper_settings('color', 32)[1]


# ----------------------------------------------------------------------------
# The command line with a tiny untrained NCSN++ (the loader is replaced; no trained model).

@pytest.fixture
def tiny(monkeypatch):
    torch.manual_seed(0)
    G = models.NCSNpp(**models.CONFIGS['tiny']['G']).eval()
    meta = dict(schedule='d', K=4, discretisation='original', nz=8, image_size=32, channels=3, posterior=False)
    monkeypatch.setattr(pnp.cli, 'load_generator', lambda *args, **kwargs: (G, meta))
    return G


def write_png(path, shape, seed=0):
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def run_cli(*argv):
    pnp.main(pnp.build_parser().parse_args(['--ckpt', 'unused.pt', '--M', '1', *argv]))


def test_cli_folder_writes_grids_metrics_and_summary(tiny, tmp_path):
    for i in range(3):
        write_png(tmp_path / f'img{i}.png', (32, 32, 3), seed=i)
    out = tmp_path / 'out'
    run_cli('--task', 'sr2', '--folder', str(tmp_path), '--n', '3', '--batch-size', '2', '--out', str(out))
    with Image.open(out / 'grid_000.png') as im:
        assert im.size == (4 * 32 + 5 * 2, 2 * 32 + 3 * 2)            # gt | H^+ y | bicubic | RGM, 2 rows
    assert (out / 'grid_001.png').exists() and len(list((out / 'restored').glob('*.png'))) == 3
    rows = list(csv.DictReader(open(out / 'metrics.csv')))
    assert sorted({r['method'] for r in rows}) == ['bicubic', 'pinv', 'rgm'] and len(rows) == 9
    # The pinv baseline recomputed from the file: nearest upsampling of the 2x2 block means.
    x = torch.from_numpy(np.array(Image.open(tmp_path / 'img0.png'))).permute(2, 0, 1)[None].double() / 255
    expected = pnp.psnr(up(F.avg_pool2d(x, 2), 2), x).item()
    assert float(next(r for r in rows if r['image'] == 'img0' and r['method'] == 'pinv')['psnr']) == pytest.approx(expected, rel=1e-5)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['settings'] == dict(M=1, lam=0.2, alpha=0.2, J=1) and summary['n'] == 3
    mean_rgm = np.mean([float(r['ssim']) for r in rows if r['method'] == 'rgm'])
    assert summary['mean']['rgm']['ssim'] == pytest.approx(mean_rgm)


def test_cli_image_with_noise_and_inpainting(tiny, tmp_path):
    path = write_png(tmp_path / 'a.png', (32, 32, 3))
    out = tmp_path / 'out'
    run_cli('--task', 'inpaint', '--image', str(path), '--sigma-y', '10', '--out', str(out))
    summary = json.loads((out / 'summary.json').read_text())
    assert set(summary['mean']) == {'pinv', 'rgm'} and summary['sigma_y'] == 10


@pytest.mark.parametrize('task,shape,mode', [('color', (32, 32), 'L'), ('sr4', (8, 8, 3), 'RGB')])
def test_cli_observed_restores_without_metrics(tiny, tmp_path, task, shape, mode):
    path = write_png(tmp_path / 'low.png', shape)
    out = tmp_path / 'out'
    run_cli('--task', task, '--observed', str(path), '--out', str(out))
    with Image.open(out / 'restored' / 'low.png') as im:
        assert im.size == (32, 32) and im.mode == 'RGB'
    assert not (out / 'metrics.csv').exists() and json.loads((out / 'summary.json').read_text())['mean'] == {}


@pytest.mark.parametrize('flag,task,shape,message', [
    ('--image', 'sr2', (32, 32), 'gray but the model is a colour model'),
    ('--image', 'sr4', (30, 30, 3), 'divisible by 4'),
    ('--image', 'sr2', (16, 16, 3), 'trained on 32x32'),
    ('--observed', 'sr2', (32, 32, 3), 'trained on 32x32'),
    ('--observed', 'color', (32, 32, 3), 'gray image'),
    ('--observed', 'inpaint', (32, 32, 3), 'mask is unknown'),
])
def test_cli_clear_errors(tiny, tmp_path, flag, task, shape, message):
    path = write_png(tmp_path / 'x.png', shape)
    with pytest.raises(ValueError, match=message):
        run_cli('--task', task, flag, str(path), '--out', str(tmp_path / 'out'))


def test_cli_rejects_unknown_task_and_too_many_levels(tiny, tmp_path):
    with pytest.raises(SystemExit):
        pnp.build_parser().parse_args(['--task', 'deblur', '--ckpt', 'x', '--image', 'x', '--out', 'o'])
    path = write_png(tmp_path / 'x.png', (32, 32, 3))
    with pytest.raises(ValueError, match='exceeds'):
        run_cli('--task', 'sr2', '--J', '5', '--image', str(path), '--out', str(tmp_path / 'out'))


def test_authors_generator_loads_through_the_converter(tmp_path):
    """The --authors-config path: the authors' tiny generator (stored fixture) gives their output."""
    fixture = generator_parity()
    torch.save(fixture['G_state_dict'], tmp_path / 'netG.pth')
    G, meta = models.open_generator(tmp_path / 'netG.pth', authors_config='tiny', schedule='d', K=4)
    inputs = fixture['G_inputs']
    with torch.no_grad():
        assert torch.allclose(G(inputs['x'], inputs['t'], inputs['z']), fixture['G_output'], atol=1e-5)
    assert meta == dict(schedule='d', K=4, discretisation='original', nz=8, image_size=32, channels=3, posterior=False)


def test_cli_with_a_checkpoint_file(tmp_path):
    """The real loader: a checkpoint written with models.save_checkpoint is rebuilt from the file alone."""
    torch.manual_seed(0)
    G, D = models.build_networks('tiny')
    meta = dict(schedule='d', K=4, discretisation='original', nz=8, image_size=32, channels=3, posterior=False)
    ckpt = dict(format=models.CKPT_FORMAT, G_kwargs=models.CONFIGS['tiny']['G'], D_kwargs=models.CONFIGS['tiny']['D'],
                meta=meta, G=G.state_dict(), G_ema=G.state_dict(), D=D.state_dict())
    models.save_checkpoint(ckpt, tmp_path / 'ckpt.pt')
    path = write_png(tmp_path / 'a.png', (32, 32, 3))
    out = tmp_path / 'out'
    pnp.main(pnp.build_parser().parse_args(['--ckpt', str(tmp_path / 'ckpt.pt'), '--M', '1', '--task', 'sr2',
                                            '--image', str(path), '--out', str(out)]))
    summary = json.loads((out / 'summary.json').read_text())
    assert set(summary['mean']) == {'pinv', 'bicubic', 'rgm'} and np.isfinite(summary['mean']['rgm']['psnr'])
