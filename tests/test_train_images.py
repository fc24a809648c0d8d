"""train_images.py: the RGM update on tiny networks, the learning-rate schedule against torch's,
the run directory and checkpoint contract, exact resume, NaN stops, SIGKILL and torchrun restarts,
MMD/DSWD over two gloo ranks against one process, and the errors for bad inputs.
CPU only, no network: data are `fake` images or PNGs written to tmp_path."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import losses
from bench.common import child_pids
import models
import train_images as ti
from schedules import make_schedule

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
# Networks smaller than the 'tiny' configuration, for calling train_step directly.
G_KW = dict(image_size=16, channels=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), nz=4, z_emb_dim=8, n_mlp=1)
D_KW = dict(image_size=16, channels=4, ch_mult=(2, 4), emb_dim=8)
FEATURES = 4 * 4 * 16                                   # D's flattened (channels * 4, 4, 4) features


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _micro(lr_G=1e-3, lr_D=1e-3, nz=4, seed=0):
    torch.manual_seed(seed)
    G, D = models.NCSNpp(**dict(G_KW, nz=nz)), models.Discriminator(**D_KW)
    return (G, D, torch.optim.Adam(G.parameters(), lr_G, betas=ti.ADAM_BETAS),
            torch.optim.Adam(D.parameters(), lr_D, betas=ti.ADAM_BETAS))


def _run(tmp_path, *flags, out='run'):
    """main() in this process on the tiny preset at 16 px; returns the run directory."""
    out = tmp_path / out
    ti.main(ti.parse_args(['--preset', 'tiny', '--image-size', '16', '--device', 'cpu', '--fake-size', '20',
                           '--out', str(out), *flags]))
    return out


def _log(out):
    return [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]


def _ckpts(out):
    return ti.checkpoints(out / 'checkpoints')


# ---- train_step ----------------------------------------------------------

def test_fidelity_falls_on_a_fixed_batch():
    """Eq. 8 with lam = 1: G learns to restore x_1; its fidelity on held-out noise falls from the
    start at least 3/4 of the way to that of the true x0 (0.5 ||eps||^2, the noise floor)."""
    G, D, opt_G, opt_D = _micro(lr_G=3e-3)
    s, critic = make_schedule('d', 4), losses.KLD()
    x0 = torch.sign(torch.randn(8, 3, 16, 16))                             # +-1 pixels
    k = torch.zeros(8, dtype=torch.long)
    x_next, z = s.sample(x0, k + 1), torch.randn(8, 4)

    def fid(x0_hat):
        return losses.fidelity(x_next, x0_hat, k, s).mean().item()

    with torch.no_grad():
        before = fid(G(x_next, k, z))
    floor = fid(x0)
    for step in range(1, 41):
        ti.train_step(G, D, opt_G, opt_D, x0, s, critic, critic, step, lam=1.0, nz=4)
    with torch.no_grad():
        after = fid(G(x_next, k, z))
    # G starts near 0, so the excess over the floor is about 1/2 (abar_1 / sigmabar_1)^2 ||x0||^2.
    assert before - floor > 0.5 * 0.5 * (s.abar[1] / s.sigmabar[1]).item() ** 2 * 768
    assert after < floor + 0.25 * (before - floor), (before, after, floor)


def test_discriminator_starts_at_2_log_2_learns_and_applies_lazy_r1():
    """D's last layer starts at 0: logits 0, loss_D = 2 log 2 and prior -D = 0. With G fixed
    (lr 0) D learns to tell x_k from x_k_hat and its loss falls; R1 only every lazy_reg steps."""
    G, D, opt_G, opt_D = _micro(lr_G=0.0)
    G_start = {key: v.clone() for key, v in G.state_dict().items()}
    s, critic = make_schedule('d', 4), losses.KLD(r1_gamma=1.0, lazy_reg=5)
    x0 = torch.sign(torch.randn(8, 3, 16, 16))
    first = ti.train_step(G, D, opt_G, opt_D, x0, s, critic, critic, 1, lam=1e-3, nz=4)
    assert abs(first['loss_D'].item() - 2 * math.log(2)) < 1e-3
    # the G step follows one Adam step of D (each weight moves by ~lr = 1e-3; the final linear layer's
    # U(-sqrt 3, sqrt 3) weights, the authors' fan_out rule, amplify it): -D is still near 0
    assert abs(first['prior'].item()) < 0.2
    history = [ti.train_step(G, D, opt_G, opt_D, x0, s, critic, critic, step, lam=1e-3, nz=4)
               for step in range(2, 42)]
    assert all(torch.equal(v, G_start[key]) for key, v in G.state_dict().items())
    late = np.mean([t['loss_D'].item() for t in history[-10:]])
    assert late < 2 * math.log(2) - 0.2, late
    assert all((t['r1'].item() > 0) == (step % 5 == 0) for step, t in zip(range(2, 42), history))


@pytest.mark.parametrize('prior, schedule, K, posterior, nz, lam', [
    ('kld', 'd', 4, False, 4, 1e-3), ('mmd', 'd', 4, False, 4, 1e-3), ('dswd', 'd', 4, False, 4, 1e-3),
    ('kld', 'sr_naive', 4, False, 4, 1e-3), ('mmd', 'sr', 7, False, 4, 1e-3), ('dswd', 'sr', 7, False, 4, 1e-3),
    ('kld', 'd', 4, True, 4, 1e-3), ('dswd', 'd', 4, True, 4, 1e-3),
    ('kld', 'd', 1, False, 4, 1e-3), ('kld', 'd', 4, False, 0, 1e-3), ('mmd', 'd', 4, False, 4, 0.0)])
def test_every_prior_and_schedule_runs(monkeypatch, prior, schedule, K, posterior, nz, lam):
    """Two steps of every combination (and the ablations: K = 1, nz = 0, lam = 0): finite terms, G, D
    (and DSWD's directions) updated, distances >= 0, DSWD on one level per batch, and the fidelity of
    the algorithm asked for (Algorithm 1 compares x_{k+1} with a_{k+1} x_k_hat)."""
    G, D, opt_G, opt_D = _micro(nz=nz)
    s, critic = make_schedule(schedule, K), losses.KLD()
    term = {'kld': critic, 'mmd': losses.MMD(bandwidths=(1, 2, 4, 8, 16)),
            'dswd': losses.DSWD(models.TransformNet(FEATURES), num_projections=8, inner_steps=2)}[prior]
    seen = []
    name = 'posterior_fidelity' if posterior else 'fidelity'
    real = getattr(losses, name)
    monkeypatch.setattr(losses, name, lambda *a: seen.append(a[2]) or real(*a))
    before = [{key: v.clone() for key, v in net.state_dict().items()}
              for net in [G, D] + ([term.transform] if prior == 'dswd' else [])]
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    for step in (1, 2):
        terms = ti.train_step(G, D, opt_G, opt_D, x0, s, critic, term, step, lam=lam, nz=nz, posterior=posterior)
        assert all(torch.isfinite(v) for v in terms.values()), terms
    assert len(seen) == 2 and all(k.shape == (8,) and int(k.max()) < K for k in seen)
    for net, state in zip([G, D] + ([term.transform] if prior == 'dswd' else []), before):
        assert any(not torch.equal(v, state[key]) for key, v in net.state_dict().items())
    if prior != 'kld':
        assert terms['prior'] >= 0
    if prior == 'dswd':
        assert all((k == k[0]).all() for k in seen)
    torch.testing.assert_close(terms['loss_G'], lam * terms['fidelity'] + terms['prior'])


def test_cosine_lr_is_the_authors_per_epoch_cosine():
    """LambdaLR stepped per step with our factor = torch's CosineAnnealingLR(T_max, eta_min) stepped
    once per epoch (the authors'), then flat at eta_min after T_max."""
    spe, tmax, base, lr_min = 3, 4, 2e-4, 1e-5
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tmax, eta_min=lr_min)
    factor = ti.cosine_lr(base, lr_min, tmax, spe)
    for step in range(spe * tmax):
        assert math.isclose(base * factor(step), opt.param_groups[0]['lr'], rel_tol=1e-9)
        if step % spe == spe - 1:
            opt.step()                                                     # (no gradient: no change)
            ref.step()
    assert math.isclose(base * factor(spe * tmax), lr_min) and math.isclose(base * factor(10 * spe * tmax), lr_min)
    assert ti.cosine_lr(base, lr_min, 0, spe)(10**6) == 1.0                # --lr-tmax 0: constant


# ---- data --------------------------------------------------------------------

def test_epoch_sampler_skips_exactly_the_consumed_part():
    data = list(range(23))
    full = ti.EpochSampler(torch.utils.data.DistributedSampler(data, 2, 1, shuffle=True, seed=3, drop_last=True))
    full.set_epoch(4)
    order = list(full)
    part = ti.EpochSampler(torch.utils.data.DistributedSampler(data, 2, 1, shuffle=True, seed=3, drop_last=True))
    part.set_epoch(4, skip=5)
    assert len(order) == 11 and list(part) == order[5:] and len(part) == 6
    full.set_epoch(5)
    assert list(full) != order                                             # a new shuffle per epoch


def test_folder_images_are_read_recursively_into_minus_one_one(tmp_path):
    (tmp_path / 'class_a').mkdir()
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[..., 1], pixels[..., 2] = 51, 255
    Image.fromarray(pixels).save(tmp_path / 'class_a' / 'x.png')
    Image.fromarray(pixels).convert('L').save(tmp_path / 'gray.PNG')
    (tmp_path / 'notes.txt').write_text('not an image')
    images = data.build_dataset('folder', str(tmp_path), 16)
    assert len(images) == 2
    x, _ = images[[Path(f).name for f in images.files].index('x.png')]
    torch.testing.assert_close(x, torch.tensor([-1.0, 51 / 255 * 2 - 1, 1.0])[:, None, None].expand(3, 16, 16))
    assert images[0][0].shape == images[1][0].shape == (3, 16, 16)


def test_folder_counts_each_file_once_through_symbolic_link_loops(tmp_path):
    """A link back to a parent folder (a loop) and a second link to a subfolder must not make the same
    images count again (which would also bend the per-epoch learning-rate schedule)."""
    (tmp_path / 'a' / 'b').mkdir(parents=True)
    for i, folder in enumerate([tmp_path, tmp_path / 'a', tmp_path / 'a' / 'b']):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f'img{i}.png')
    (tmp_path / 'a' / 'b' / 'loop').symlink_to(tmp_path, target_is_directory=True)     # b/loop -> root
    (tmp_path / 'again').symlink_to(tmp_path / 'a', target_is_directory=True)           # a second path to a
    (tmp_path / 'a' / 'same.png').symlink_to(tmp_path / 'img0.png')                     # a second path to a file
    files = data.list_images(str(tmp_path))
    assert sorted(Path(f).name for f in files) == ['img0.png', 'img1.png', 'img2.png']
    assert len(data.build_dataset('folder', str(tmp_path), 8)) == 3


def test_folder_follows_a_link_to_images_outside_it(tmp_path):
    (tmp_path / 'elsewhere').mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'elsewhere' / 'far.png')
    (tmp_path / 'root').mkdir()
    (tmp_path / 'root' / 'linked').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
    assert [Path(f).name for f in data.list_images(str(tmp_path / 'root'))] == ['far.png']


# ---- runs ----------------------------------------------------------------------

def test_run_directory_and_checkpoint_contract(tmp_path):
    """A run on a folder of PNGs: config.json, log.jsonl, EMA grids, latest-N checkpoints that load
    with weights_only=True and rebuild G (models.load_generator)."""
    for i in range(17):
        rgb = np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f'{i}.png')
    out = _run(tmp_path, '--dataset', 'folder', '--data-dir', str(tmp_path), '--max-steps', '4', '--ckpt-every', '2',
               '--sample-every', '2', '--log-every', '2', '--keep-ckpts', '1', '--lr-tmax', '5')
    config = json.loads((out / 'config.json').read_text())
    assert config['steps_per_epoch'] == 2 and config['local_batch'] == 8 and config['world_size'] == 1
    records = _log(out)
    assert records[0]['event'] == 'start' and [r['step'] for r in records[1:]] == [2, 4]
    assert {'loss_D', 'loss_G', 'fidelity', 'prior', 'r1', 'lr_G', 'lr_D', 'img_per_s', 'mem_GB'} <= set(records[1])
    assert sorted(p.name for p in (out / 'samples').iterdir()) == ['00000002.png', '00000004.png']
    assert Image.open(out / 'samples' / '00000004.png').size == (4 * 18 + 2, 4 * 18 + 2)    # 16 images of 16 px
    assert list(_ckpts(out)) == [4]                                                       # --keep-ckpts 1

    ckpt = torch.load(_ckpts(out)[4], weights_only=True)
    assert set(ckpt) == {'format', 'G_kwargs', 'D_kwargs', 'meta', 'G', 'G_ema', 'D', 'opt_G', 'opt_D',
                         'sched_G', 'sched_D', 'step', 'epoch', 'config'}
    assert ckpt['format'] == models.CKPT_FORMAT and ckpt['step'] == 4 and ckpt['epoch'] == 2
    assert ckpt['meta'] == dict(schedule='d', K=4, discretisation='original', posterior=False, nz=8,
                                image_size=16, channels=3, prior='kld', dataset='folder')
    assert ckpt['G_kwargs'] == dict(models.CONFIGS['tiny']['G'], image_size=16, ch_mult=[1, 2, 2, 2],
                                    attn_resolutions=[16])
    assert all(state['step'] == 4 for state in ckpt['opt_G']['state'].values())
    assert ckpt['sched_G']['last_epoch'] == 4
    # lr at step 4 = epoch 2 of a 5-epoch cosine from 1.6e-4 to 1e-5
    assert math.isclose(ckpt['opt_G']['param_groups'][0]['lr'], 1e-5 + 1.5e-4 * (1 + math.cos(math.pi * 2 / 5)) / 2)
    G, meta = models.load_generator(_ckpts(out)[4])
    assert meta == ckpt['meta'] and all(torch.equal(v, ckpt['G_ema'][key]) for key, v in G.state_dict().items())
    assert not torch.equal(ckpt['G_ema']['conv_in.weight'], ckpt['G']['conv_in.weight'])   # a separate EMA


def test_resumed_run_equals_the_uninterrupted_run(tmp_path):
    """Stopped at step 3 (mid-epoch) and resumed to 6, the run ends with exactly the weights,
    EMA, optimiser states and DSWD directions of a run that never stopped."""
    flags = ['--prior', 'dswd', '--dswd-projections', '16', '--dswd-steps', '2', '--lazy-reg', '2', '--ckpt-every', '3',
             '--sample-every', '100']
    whole = _run(tmp_path, *flags, '--max-steps', '6', out='whole')
    parts = _run(tmp_path, *flags, '--max-steps', '3', out='parts')
    _run(tmp_path, *flags, '--max-steps', '6', '--resume', out='parts')
    a, b = (torch.load(_ckpts(out)[6], weights_only=True) for out in (whole, parts))
    assert a['step'] == b['step'] == 6 and a['epoch'] == b['epoch'] == 3
    for key in ['G', 'G_ema', 'D', 'transform']:
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key
    for key in ['opt_G', 'opt_D', 'opt_T']:
        for i, state in a[key]['state'].items():
            assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(b[key]['state'][i][n])) for n, v in state.items())
    events = [r for r in _log(parts) if 'event' in r]
    assert [(e['event'], e['step']) for e in events] == [('start', 0), ('resume', 3)]


def test_nan_stops_naming_step_and_term_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    calls, real = [], losses.fidelity

    def fidelity(*a):
        calls.append(1)
        out = real(*a)
        return out * float('nan') if len(calls) == 3 else out

    monkeypatch.setattr(losses, 'fidelity', fidelity)
    with pytest.raises(FloatingPointError, match=r'non-finite fidelity from step 3, loss_G from step 3, .*checked at step 4.*ckpt_00000002\.pt'):
        _run(tmp_path, '--max-steps', '6', '--ckpt-every', '2')
    found = _ckpts(tmp_path / 'run')
    assert list(found) == [2] and models.load_checkpoint(found[2])['step'] == 2


def _wait_for_checkpoint(out, step, proc, log, timeout=120):
    """Wait until the running `proc` has written a checkpoint at `step` or later."""
    start = time.time()
    while not any(s >= step for s in _ckpts(out)):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() - start < timeout, f'no checkpoint at step {step} or later'
        time.sleep(0.05)


def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path):
    """Checkpoints every step, SIGKILL mid-run: every ckpt_*.pt loads (atomic writes), --resume
    continues from the last one, and the stale temporary file of a killed save is removed."""
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, 'train_images.py', '--preset', 'tiny', '--image-size', '16', '--device', 'cpu',
                             '--fake-size', '20', '--out', str(out), '--max-steps', '1000', '--ckpt-every', '1',
                             '--keep-ckpts', '2', '--sample-every', '1000'],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=(tmp_path / 'err').open('w'))
    _wait_for_checkpoint(out, 3, proc, tmp_path / 'err')
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = _ckpts(out)
    assert found and all(models.load_checkpoint(path)['step'] == step for step, path in found.items())
    last = max(found)
    _run(tmp_path, '--resume', '--max-steps', str(last + 2), '--ckpt-every', '1', '--keep-ckpts', '2',
         '--sample-every', '1000')
    resume = [r for r in _log(out) if r.get('event') == 'resume']
    assert len(resume) == 1 and resume[0]['step'] == last
    final = torch.load(_ckpts(out)[last + 2], weights_only=True)
    assert all(state['step'] == last + 2 for state in final['opt_G']['state'].values())
    assert not list((out / 'checkpoints').glob('.tmp-*'))


def test_torchrun_two_gloo_ranks_restart_after_a_killed_worker(tmp_path):
    """torchrun --max-restarts 1, 2 processes on gloo, MMD prior: a worker SIGKILLed after the
    checkpoint at step 4 makes torchrun restart both, which resume by themselves and finish."""
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             '--max-restarts', '1', 'train_images.py', '--preset', 'tiny', '--image-size', '16',
                             '--device', 'cpu', '--prior', 'mmd', '--fake-size', '24', '--out', str(out),
                             '--max-steps', '16', '--ckpt-every', '2', '--log-every', '1', '--sample-every', '100'],
                            cwd=REPO, env=ENV, stdout=(tmp_path / 'out').open('w'), stderr=(tmp_path / 'err').open('w'))
    _wait_for_checkpoint(out, 4, proc, tmp_path / 'err')
    workers = child_pids(proc.pid, b'RANK=1')
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    assert proc.wait(timeout=240) == 0, (tmp_path / 'err').read_text()[-3000:]
    stdout = (tmp_path / 'out').read_text()
    assert stdout.count('new run: 2 process(es)') == 1 and stdout.count('resuming') == 1   # rank 0 alone prints
    records = _log(out)
    resume = [r for r in records if r.get('event') == 'resume']
    assert len(resume) == 1 and resume[0]['restart'] == 1 and resume[0]['world_size'] == 2 and resume[0]['step'] >= 4
    steps = [r['step'] for r in records if 'event' not in r]
    assert steps == list(range(1, 17))                       # records past the checkpoint were replaced
    assert all(math.isfinite(r['prior']) and r['prior'] > 0 for r in records if 'event' not in r)
    final = torch.load(_ckpts(out)[16], weights_only=True)
    assert final['config']['world_size'] == 2 and final['config']['local_batch'] == 4


DIST_SCRIPT = textwrap.dedent('''
    import copy, gc, sys
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import losses, models, train_images as ti
    from schedules import make_schedule

    def main():
        """Everything that holds DDP or gloo state lives in here and is freed before teardown."""
        rank, W = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        B, F = 8, 12
        x_real, x_in = torch.randn(B, F), torch.randn(B, F)
        mine = slice(rank * B // W, (rank + 1) * B // W)
        out = {}
        for name in ['mmd', 'dswd']:
            torch.manual_seed(1)
            net = torch.nn.Linear(F, F)                      # stands in for D's features of G's output
            prior = (losses.MMD((1.0, 2.0, 4.0)) if name == 'mmd'
                     else losses.DSWD(models.TransformNet(F), 6, inner_steps=3))
            ref_net, ref_prior = copy.deepcopy(net), copy.deepcopy(prior)     # one process, the global batch
            ddp = DDP(net)
            D = lambda x, k: (None, ddp(x))                  # prior_term takes D's features
            shared = torch.Generator().manual_seed(7)
            value = ti.prior_term(prior, D, x_real[mine], x_in[mine], None, shared)
            value.backward()                                  # DDP averages the gradient over ranks
            with torch.no_grad():
                f_real = ref_net(x_real)
            ref = ref_prior(f_real, ref_net(x_in), generator=torch.Generator().manual_seed(7)) \\
                if name == 'dswd' else ref_prior(f_real, ref_net(x_in))
            ref.backward()
            out[name] = dict(value=value.item(), ref=ref.item(), grad=net.weight.grad.clone(),
                             ref_grad=ref_net.weight.grad)
            if name == 'dswd':
                w = [torch.zeros_like(prior.transform.linear.weight) for _ in range(W)]
                dist.all_gather(w, prior.transform.linear.weight.detach())
                out[name].update(transform=w, ref_transform=ref_prior.transform.linear.weight.detach())

        # One full train_step under DDP with the DSWD prior: the level k of the G step is shared.
        torch.manual_seed(0)
        G = DDP(models.NCSNpp(**dict(image_size=16, channels=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                     nz=4, z_emb_dim=8, n_mlp=1)))
        Dm = models.Discriminator(image_size=16, channels=4, ch_mult=(2, 4), emb_dim=8)
        D = DDP(Dm)
        opt_G, opt_D = (torch.optim.Adam(n.parameters(), 1e-3) for n in (G, D))
        prior = losses.DSWD(models.TransformNet(256), 8, inner_steps=2)
        seen, real_fid = [], losses.fidelity
        losses.fidelity = lambda *a: seen.append(a[2]) or real_fid(*a)
        torch.manual_seed(10 + rank)                         # different data and noise on each rank
        terms = ti.train_step(G, ti.Critic(Dm, train=D, r1=D), opt_G, opt_D, torch.rand(4, 3, 16, 16) * 2 - 1,
                              make_schedule('d', 4), losses.KLD(), prior, 0, 1e-3, 4, shared=torch.Generator().manual_seed(3))
        k = [torch.zeros_like(seen[0]) for _ in range(W)]
        dist.all_gather(k, seen[0])
        p = [torch.zeros(1) for _ in range(W)]
        dist.all_gather(p, terms['prior'].reshape(1))
        weights = torch.cat([v.flatten() for net in (G.module, Dm, prior.transform) for v in net.state_dict().values()])
        w = [torch.zeros_like(weights) for _ in range(W)]
        dist.all_gather(w, weights)
        out['step'] = dict(k=k, prior=p, weights=w)
        if rank == 0:
            torch.save(out, sys.argv[1])

    dist.init_process_group('gloo')
    main()
    gc.collect()
    dist.barrier()                                       # both ranks done before either leaves the group
    dist.destroy_process_group()
''')


def test_mmd_and_dswd_over_two_ranks_equal_one_process(tmp_path):
    """Features gathered with gradients: on 2 gloo ranks the MMD/DSWD value, the DDP-averaged weight
    gradient and the fitted TransformNet (same on both ranks) equal one process on the global batch;
    in a DDP train_step (R1 included) both ranks use one level k, get the same DSWD value and
    end with the same G, D and TransformNet."""
    script = tmp_path / 'dist_priors.py'
    script.write_text(DIST_SCRIPT)
    result = tmp_path / 'result.pt'
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(script), str(result)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = torch.load(result, weights_only=True)
    for name in ['mmd', 'dswd']:
        r = out[name]
        assert r['ref'] > 0 and math.isclose(r['value'], r['ref'], rel_tol=1e-5), (name, r['value'], r['ref'])
        torch.testing.assert_close(r['grad'], r['ref_grad'], rtol=1e-4, atol=1e-7)
    w0, w1 = out['dswd']['transform']
    assert torch.equal(w0, w1)
    torch.testing.assert_close(w0, out['dswd']['ref_transform'], rtol=1e-5, atol=1e-7)
    k0, k1 = out['step']['k']
    assert (k0 == k0[0]).all() and torch.equal(k0, k1)
    assert out['step']['prior'][0].item() == out['step']['prior'][1].item() > 0
    torch.testing.assert_close(*out['step']['weights'], rtol=0, atol=1e-6)    # G, D, directions in step


# ---- errors ------------------------------------------------------------------------

@pytest.mark.parametrize('flags, message', [
    (['--preset', 'cifar100'], "argument --preset: invalid choice: 'cifar100'"),
    (['--dataset', 'imagenet'], "argument --dataset: invalid choice: 'imagenet'"),
])
def test_unknown_preset_or_dataset(capsys, flags, message):
    with pytest.raises(SystemExit):
        ti.parse_args(flags)
    assert message in capsys.readouterr().err


def test_presets_hold_the_paper_settings_and_flags_override_them():
    a = ti.parse_args(['--preset', 'cifar10_kld_sr', '--lam', '0'])
    assert (a.schedule, a.K, a.batch_size, a.lr_G, a.lr_D, a.lam, a.max_steps) == ('sr', 7, 256, 1.6e-4, 1e-4, 0.0, 230_000)
    c = ti.parse_args(['--preset', 'celeba256_kld_d'])
    assert (c.net, c.r1_gamma, c.lazy_reg, c.lam, c.lr_G, c.lr_tmax) == ('celeba256', 2.0, 10, 5e-5, 2e-4, 700)


def test_batch_split_errors():
    assert ti.split_batch(256, 8, 4) == 32
    with pytest.raises(ValueError, match='must divide over the 3 processes'):
        ti.split_batch(8, 3, 4)
    with pytest.raises(ValueError, match='per-process batch 2 .* minibatch-std group 4'):
        ti.split_batch(8, 4, 4)


@pytest.mark.parametrize('flags, error, message', [
    (['--dataset', 'folder', '--data-dir', '/nonexistent/images'], FileNotFoundError, 'does not exist'),
    (['--dataset', 'folder', '--data-dir', '{tmp}'], FileNotFoundError, 'holds no images'),
    (['--schedule', 'sr_naive', '--K', '5'], ValueError, 'divisible by 32'),
    (['--batch-size', '6'], ValueError, 'minibatch-std group 4'),
    (['--posterior', '--schedule', 'sr', '--K', '3'], ValueError, 'denoising process d only'),
    (['--fake-size', '4'], ValueError, 'fewer than one --batch-size'),
    (['--resume'], FileNotFoundError, 'no checkpoint'),
])
def test_bad_inputs_give_clear_errors(tmp_path, flags, error, message):
    with pytest.raises(error, match=message):
        _run(tmp_path, *[f.format(tmp=tmp_path) for f in flags], '--max-steps', '1')


def test_existing_run_needs_resume_and_the_same_configuration(tmp_path):
    _run(tmp_path, '--max-steps', '1')
    with pytest.raises(FileExistsError, match='pass --resume'):
        _run(tmp_path, '--max-steps', '2')
    with pytest.raises(ValueError, match=r"another configuration \(K: checkpoint 4, now 3; prior: checkpoint 'kld'"):
        _run(tmp_path, '--max-steps', '2', '--resume', '--K', '3', '--prior', 'mmd')


def test_ddp_never_rebroadcasts_the_constant_buffers(monkeypatch):
    """DDP's default copies rank 0's buffers in place before every forward; under NCCL that bumps their
    autograd version between D's forward on the real images and R1's backward through it (a 1-GPU
    torchrun run failed so). The networks' buffers are constant FIR filters, not saved, so `wrap` turns
    the broadcast off; gloo on a CPU does not show the failure, hence this check of the wrapping."""
    made = []
    monkeypatch.setattr(ti.dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(ti, 'DDP', lambda net, **kw: made.append(kw) or net)
    G = models.NCSNpp(image_size=16, channels=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), nz=4,
                      z_emb_dim=8, n_mlp=1)
    D = models.Discriminator(image_size=16, channels=4, ch_mult=(2, 4), emb_dim=8)
    nets = type('Nets', (), dict(G=G, D=D))()
    ti.wrap(nets, type('Args', (), dict(compile=False))(), torch.device('cpu'))
    assert len(made) == 2 and all(kw['broadcast_buffers'] is False for kw in made)
    for net in (G, D):
        buffers = dict(net.named_buffers())
        assert buffers and all(name.endswith('fir') for name in buffers)           # nothing else to keep in sync
        assert all(torch.equal(b, models.fir_kernel()) for b in buffers.values())
        assert not set(buffers) & set(net.state_dict())                             # not saved: constants


@pytest.mark.parametrize('preset', ['fashion_kld_d', 'fashion_mmse_d'])
def test_channels_last_step_is_the_plain_step(preset):
    """The Fashion presets train in NHWC layout for speed: from the same weights and draws, one step (R1
    included for KLD) gives the same loss terms and the same gradients (those of the D step and of the G
    step, left in .grad) as the NCHW step, to fp32 rounding. (Updated weights are not compared: Adam's
    first step moves each weight by about lr x sign(gradient), which rounding can flip for a tiny one.)"""
    cfg = ti.parse_args(['--preset', preset])
    assert cfg.channels_last
    out = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        setup = ti.configure(cfg, 1, torch.device('cpu'))
        torch.manual_seed(0)
        nets = ti.build_nets(cfg, setup, torch.device('cpu'), steps_per_epoch=1, memory_format=fmt)
        x0 = (torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(memory_format=fmt)
        torch.manual_seed(2)
        if setup.baseline:
            terms = ti.BASELINE_STEPS[cfg.prior](nets.G, nets.opt_G, x0, setup.schedule)
        else:
            terms = ti.train_step(nets.G, nets.D, nets.opt_G, nets.opt_D, x0, setup.schedule, nets.critic, nets.prior,
                                  0, cfg.lam, setup.nz)
        grads = [p.grad.clone() for net in (nets.G, nets.D) if net is not None for p in net.parameters()
                 if p.grad is not None]
        out[fmt] = terms, grads
    (a, wa), (b, wb) = out.values()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert len(wa) == len(wb) > 100
    for p, q in zip(wa, wb):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5 * (p.abs().max().item() if p.numel() else 0) + 1e-12)
