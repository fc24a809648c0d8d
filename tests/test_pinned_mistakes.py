"""Plausible one-line mistakes in the training step, the sampler and the priors, each pinned by an
independent number (a review found that the rest of the suite let them pass):
- D shown x_{k+1} as its real sample instead of x_k;   - the G step reusing the D step's level k;
- the EMA written with the decay on the wrong side;      - sample_rgm ignoring noise_scale;
- DSWD's cosine regulariser with the wrong sign;         - the toy's MMSE model given a z, or the
  toy training with Algorithm 1 by default;              - a checkpoint save that fails part-way."""
import math

import pytest
import torch

import losses
import models
import toy2d
import train_images as ti
from schedules import make_schedule, sample_rgm

G_KW = dict(image_size=16, channels=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), nz=4, z_emb_dim=8, n_mlp=1)
D_KW = dict(image_size=16, channels=4, ch_mult=(2, 4), emb_dim=8)


class Recorder(torch.nn.Module):
    """Wraps a network and records the (input, level) of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, k, *rest):
        self.calls.append((x.detach().clone(), k.clone()))
        return self.net(x, k, *rest)


def _step(B=32, step=1, prior='kld'):
    torch.manual_seed(0)
    G, D = Recorder(models.NCSNpp(**G_KW)), Recorder(models.Discriminator(**D_KW))
    opt_G, opt_D = (torch.optim.Adam(n.parameters(), 1e-4) for n in (G, D))
    gan = losses.KLD(r1_gamma=0.0)
    x0 = torch.zeros(B, 3, 16, 16)
    ti.train_step(G, D, opt_G, opt_D, x0, make_schedule('d', 4), gan, gan, step, lam=1e-3, nz=4)
    return G, D


def test_discriminator_sees_x_k_as_real():
    """With x0 = 0, x_k = sigmabar_k eps: the per-sample std of D's real input is sigmabar_k, not
    sigmabar_{k+1} (0, 0.69, 0.96, 0.998, 1 for K = 4)."""
    s = make_schedule('d', 4)
    _, D = _step()
    x_real, k = D.calls[0]                                  # the D step calls D(x_k) first, then D(x_k_hat)
    std = x_real.flatten(1).std(1)
    assert torch.allclose(std, s.sigmabar[k], atol=0.08), (std, s.sigmabar[k])
    assert (k == 0).any() and (std[k == 0] == 0).all()     # level 0 is x0 itself


def test_generator_step_draws_its_own_level():
    """G is called twice per iteration (D step, G step); the levels of the two calls are independent
    draws (with B = 32 equal draws would have probability 4^-32), and each lies in 0..K-1."""
    G, _ = _step()
    (x_d, k_d), (x_g, k_g) = G.calls
    assert not torch.equal(k_d, k_g) and int(max(k_d.max(), k_g.max())) <= 3
    assert not torch.equal(x_d, x_g)


def test_ema_keeps_decay_of_the_old_weights():
    ema, new = [torch.zeros(3), torch.ones(2)], [torch.full((3,), 2.0), torch.full((2,), 3.0)]
    models.ema_update(ema, new, 0.5)
    assert torch.equal(ema[0], torch.full((3,), 1.0)) and torch.equal(ema[1], torch.full((2,), 2.0))
    models.ema_update(ema, new, 0.9)                            # 0.9 old + 0.1 new
    assert torch.allclose(ema[0], torch.full((3,), 0.9 * 1 + 0.1 * 2))


class Shrink(torch.nn.Module):
    """A 'generator' x0_hat = 0.5 x_{k+1} + 0.1 (k + 1): deterministic, level-aware."""
    nz = 0

    def forward(self, x, k, z=None):
        return 0.5 * x + 0.1 * (k.float() + 1).view(-1, *[1] * (x.dim() - 1))


@pytest.mark.parametrize('schedule', [('d', 4), ('sr', 7)])
def test_noise_scale_zero_gives_the_noiseless_map_at_each_level(schedule):
    s, G = make_schedule(*schedule), Shrink()
    xs = sample_rgm(G, s, (4, 1, 16, 16), 0, noise_scale=0.0, generator=torch.Generator().manual_seed(0),
                    trajectory=True)
    for i, k in enumerate(reversed(range(s.K))):            # xs = [x_K, ..., x_0]
        level = torch.full((4,), k)
        torch.testing.assert_close(xs[i + 1], s.mean(G(xs[i], level), level))
    noisy = sample_rgm(G, s, (4, 1, 16, 16), 0, noise_scale=0.5, generator=torch.Generator().manual_seed(0),
                       trajectory=True)
    level = torch.full((4,), 1)
    resid = noisy[-2] - s.mean(G(noisy[-3], level), level)  # the level-1 noise, scaled by 0.5
    assert resid.std().item() == pytest.approx(0.5 * s.std(1).item(), rel=0.1)


def test_dswd_regulariser_spreads_the_directions():
    """The inner maximisation of SW - C mean|cos|: on two identical sets (SW = 0) only the
    regulariser acts, and the mean |cos| between the fitted directions falls."""
    torch.manual_seed(0)
    dswd = losses.DSWD(models.TransformNet(8), num_projections=32, inner_steps=200, lr=1e-2, C=10.0)
    x = torch.randn(64, 8)
    theta = dswd.directions(8, 'cpu')

    def mean_abs_cos():
        with torch.no_grad():
            phi = dswd.transform(theta)
            return (phi @ phi.T).abs().mean().item()
    before = mean_abs_cos()
    dswd.fit(x, x, theta)
    assert mean_abs_cos() < before - 0.1, (before, mean_abs_cos())


def test_toy_mmse_has_no_latent_and_toy_defaults_to_algorithm_2(monkeypatch):
    G, _ = toy2d.train('mmse', iters=2, batch_size=8, progress=False)
    assert G.nz == 0
    assert toy2d.build_parser().parse_args([]).posterior is False

    def no_posterior(*a, **k):
        raise AssertionError('Algorithm 1 used by default')
    monkeypatch.setattr(losses, 'posterior_fidelity', no_posterior)
    toy2d.train('kld', iters=2, batch_size=8, progress=False)          # Algorithm 2: losses.fidelity


def test_a_save_that_fails_part_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pt'
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, step=1), path)
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b'half a checkpoint')                       # some bytes reach the disk, then the failure
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        models.save_checkpoint(dict(format=models.CKPT_FORMAT, step=2), path)
    monkeypatch.setattr(torch, 'save', real_save)
    assert models.load_checkpoint(path)['step'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pt']          # no temporary file left
