"""Placement: every piece that builds tensors of its own (schedule tables, MMD bandwidths, DSWD
directions and their generator, the training step, the sampler, the PnP operators and DRS,
checkpoints) runs on the data's device and gives the CPU's numbers there. Each test runs on the
CPU, and on CUDA where present (`pytest -m device`). On a GPU, one training step and one sampling
call also run under torch.cuda.set_sync_debug_mode('error'): no host-device synchronisation."""
import pytest
import torch

import losses
import models
import pnp
import train_images as ti
from schedules import SCHEDULES, make_schedule, sample_rgm

pytestmark = pytest.mark.device

G_KW = dict(image_size=16, channels=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), nz=4, z_emb_dim=8, n_mlp=1)
D_KW = dict(image_size=16, channels=4, ch_mult=(2, 4), emb_dim=8)


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a.cpu().double(), b.cpu().double(), atol=tol, rtol=tol)


@pytest.mark.parametrize('name, K', [('d', 4), ('sr_naive', 3), ('sr', 7)])
@pytest.mark.parametrize('moved', [False, True])
def test_schedules_follow_the_data(device, name, K, moved):
    s_cpu, s = make_schedule(name, K), make_schedule(name, K)
    if moved:
        s.to(device)
    x0, noise = torch.rand(6, 3, 16, 16) * 2 - 1, torch.randn(6, 3, 16, 16)
    k = torch.tensor([0, 1, 2, K - 1, K, 1])
    out = s.sample(x0.to(device), k.to(device), noise=noise.to(device))
    assert out.device.type == device.type
    close(out, s_cpu.sample(x0, k, noise=noise))
    close(s.fidelity_std(k.to(device)), s_cpu.fidelity_std(k))
    if name == 'd':
        k0 = torch.tensor([0, 1, 2, 3, 0, 2])
        for a, b in zip(s.posterior_coefficients(k0.to(device)), s_cpu.posterior_coefficients(k0)):
            close(a, b)


def test_losses_on_the_device(device):
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.randn(12, 5) + 0.5
    mmd = losses.MMD(bandwidths=(1, 2, 4))
    close(mmd(x.to(device), y.to(device)), mmd(x, y))
    dswd = losses.DSWD(models.TransformNet(5).to(device), num_projections=6, inner_steps=2)
    gen = torch.Generator(device).manual_seed(1)
    value = dswd(x.to(device), y.to(device), generator=gen)
    assert value.device.type == device.type and torch.isfinite(value) and value > 0
    s = make_schedule('d', 4)
    k = torch.tensor([0, 1, 2, 3])
    x0, x_next = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    close(losses.fidelity(x_next.to(device), x0.to(device), k.to(device), s), losses.fidelity(x_next, x0, k, s))


@pytest.mark.parametrize('prior', ['kld', 'mmd', 'dswd', 'mmse'])
def test_one_train_step_of_each_prior(device, prior):
    torch.manual_seed(0)
    G, D = models.NCSNpp(**G_KW).to(device), models.Discriminator(**D_KW).to(device)
    opt_G, opt_D = (torch.optim.Adam(n.parameters(), 1e-3, betas=ti.ADAM_BETAS) for n in (G, D))
    s, gan = make_schedule('d', 4).to(device), losses.KLD(lazy_reg=1)       # R1 (double backward) too
    x0 = torch.rand(8, 3, 16, 16, device=device) * 2 - 1
    if prior == 'mmse':
        terms = ti.mmse_step(G, opt_G, x0, s)
    else:
        g = ti.make_prior(prior, gan, 16 * 16, device, (1, 2, 4), 8, 2, 1e-3)
        terms = ti.train_step(G, D, opt_G, opt_D, x0, s, gan, g, 0, 1e-3, 4,
                              shared=torch.Generator(device).manual_seed(0))
    for v in terms.values():
        assert v.device.type == device.type and torch.isfinite(v)


def test_sampling_on_the_device_is_reproducible(device):
    torch.manual_seed(0)
    G = models.NCSNpp(**G_KW).to(device).eval()
    s = make_schedule('sr', 3).to(device)
    run = lambda: sample_rgm(G, s, (3, 3, 16, 16), 4, device=device, generator=torch.Generator(device).manual_seed(5))
    a, b = run(), run()
    assert a.device.type == device.type and torch.equal(a, b) and a.abs().max() <= 1


@pytest.mark.parametrize('task', ['denoise', 'sr2', 'color', 'inpaint'])
def test_pnp_operators_and_drs_give_the_cpu_numbers(device, task):
    torch.manual_seed(0)
    op_cpu = pnp.make_operator(task, (3, 8, 8))
    op = pnp.make_operator(task, (3, 8, 8)).to(device)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = op_cpu.H(x)
    close(op.H(x.to(device)), y)
    close(op.pinv(y.to(device)), op_cpu.pinv(y))
    close(op.prox(x.to(device), y.to(device), 0.3), op_cpu.prox(x, y, 0.3))
    shrink = lambda v, j: 0.8 * v                      # a deterministic "denoiser"
    out = pnp.drs(y.to(device), op, shrink, M=3, J=1, alpha=0.5, lam=0.2)
    assert out.device.type == device.type
    close(out, pnp.drs(y, op_cpu, shrink, M=3, J=1, alpha=0.5, lam=0.2))


def test_checkpoints_load_onto_any_device(device, tmp_path):
    torch.manual_seed(0)
    G = models.NCSNpp(**G_KW).to(device)
    meta = dict(schedule='d', K=4, discretisation='original', posterior=False, nz=4, image_size=16, channels=3)
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, G_kwargs=G_KW, meta=meta, G=G.state_dict(),
                                G_ema=G.state_dict()), tmp_path / 'c.pt')
    ckpt = models.load_checkpoint(tmp_path / 'c.pt')                       # map_location='cpu'
    assert all(v.device.type == 'cpu' for v in ckpt['G'].values())
    for target in {'cpu', device.type}:
        G2, _ = models.load_generator(tmp_path / 'c.pt', device=target)
        assert next(G2.parameters()).device.type == target
        x, k = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
        z = torch.randn(2, 4)
        close(G2(x.to(target), k.to(target), z.to(target)), G.eval()(x.to(device), k.to(device), z.to(device)), 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_training_step_and_sampling_do_not_synchronise():
    """After a warm-up call, one train_step (KLD with R1, and MMD) and one sample_rgm run with sync
    debugging set to 'error': any .item(), host copy or data-dependent shape would raise."""
    device = torch.device('cuda')
    torch.manual_seed(0)
    G, D = models.NCSNpp(**G_KW).to(device), models.Discriminator(**D_KW).to(device)
    opt_G, opt_D = (torch.optim.Adam(n.parameters(), 1e-3, betas=ti.ADAM_BETAS) for n in (G, D))
    s, gan = make_schedule('d', 4).to(device), losses.KLD(lazy_reg=2)
    x0 = torch.rand(8, 3, 16, 16, device=device) * 2 - 1
    for prior in (gan, losses.MMD(bandwidths=(1, 2, 4))):
        for step in (0, 1, 2):                         # 0: warm-up; 1: plain D step; 2: R1 step
            if step:
                torch.cuda.set_sync_debug_mode('error')
            try:
                ti.train_step(G, D, opt_G, opt_D, x0, s, gan, prior, step, 1e-3, 4)
            finally:
                torch.cuda.set_sync_debug_mode('default')
    G.eval()
    gen = torch.Generator(device).manual_seed(0)
    sample_rgm(G, s, (4, 3, 16, 16), 4, device=device, generator=gen)
    torch.cuda.set_sync_debug_mode('error')
    try:
        sample_rgm(G, s, (4, 3, 16, 16), 4, device=device, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode('default')
