"""Plausible one-line mistakes in the training step, the sampler and the priors, each pinned by an
independent number (a review found that the rest of the suite let them pass):
- D shown x_{k+1} as its real sample instead of x_k;   - the G step reusing the D step's level k;
- the EMA written with the decay on the wrong side;      - sample_rgm ignoring noise_scale;
- DSWD's cosine regulariser with the wrong sign;         - the toy's MMSE model given a z, or the
  toy training with Algorithm 1 by default;              - a checkpoint save that fails part-way;
- the Fashion-MNIST floor measured against the samples, class shares without empty classes, the
  classifier's accuracy taken on its training split;    - an --overwrite check deleting files;
- bicubic upsampling with align_corners=True;            - the toy counting a mode for any sample;
- a checkpoint's temporary file outside its folder;      - the authors' attention weights not transposed;
- every rank drawing the same noise."""
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

import cli
import data
import losses
import metrics
import models
import pnp
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


# ---- metrics.py: the floor, the class shares, the classifier's accuracy ----------------------------

class PixelFeatures(torch.nn.Module):
    """A stand-in classifier: its features are the pixels themselves, its head a fixed linear map."""

    def __init__(self, n_features=4):
        super().__init__()
        self.head = torch.nn.Linear(n_features, 10)

    def features(self, x):
        return x.flatten(1)


def _fd(a, b):
    """FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) between Gaussians fitted to two
    (N, F) arrays (Heusel et al. 2017), in numpy and scipy."""
    mu1, mu2, S1, S2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(S1 + S2 - 2 * linalg.sqrtm(S1 @ S2).real))


def test_fashion_floor_is_measured_against_the_reference():
    """fd_floor = FD(floor_train, reference), the distance two real sets keep; FD(floor_train, samples)
    would be another number (here 1.26 against 15.99)."""
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 1, 2, 2, generator=gen)                   # 2 x 2 images: 4 features
    samples = 2.0 + 0.5 * torch.randn(300, 1, 2, 2, generator=gen)
    floor = 0.3 + 1.5 * torch.randn(200, 1, 2, 2, generator=gen)
    torch.manual_seed(0)
    out = metrics.fashion_scores(PixelFeatures(), samples, reference, floor_train=floor)
    ref, gen_, flo = (x.flatten(1).double().numpy() for x in (reference, samples, floor))
    assert abs(_fd(flo, ref) - _fd(flo, gen_)) > 5                         # the two choices differ
    assert out['fd_floor'] == pytest.approx(_fd(flo, ref), rel=1e-6)
    assert out['fd'] == pytest.approx(_fd(gen_, ref), rel=1e-6)


def test_class_shares_keep_the_classes_no_sample_was_given():
    """Predictions in classes 1, 2 and 4 only: still 10 shares, zero for the 7 empty classes (the last
    class is empty too, so the count must be told the number of classes)."""
    assert metrics.class_shares(torch.tensor([1, 1, 2, 4])) == [0, 0.5, 0.25, 0, 0.25, 0, 0, 0, 0, 0]


class _Split:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def tensors(self):
        return self.x, self.y


def test_classifier_accuracy_is_measured_on_the_test_split(tmp_path, monkeypatch):
    """The test split holds the training images with every label moved to the next class: a net that
    learned the training split is right on it and wrong on the test split. The accuracy get_classifier
    returns and caches is the test split's, counted here from the net's own logits."""
    y = torch.arange(100) % 10
    x = torch.full((100, 1, 32, 32), -1.0)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 2 + 3 * c:5 + 3 * c, 4:28] = 1                            # class c: a bar in row band c
    splits = {True: _Split(x, y), False: _Split(x, (y + 1) % 10)}
    monkeypatch.setattr(data, 'FashionMNIST', lambda data_dir, train=True, **kw: splits[train])
    path = tmp_path / 'clf.pt'
    net, accuracy, trained = metrics.get_classifier(str(path), 'unused', progress=False, train=True, epochs=6,
                                                     batch_size=20)
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    on_test, on_train = ((pred == labels).double().mean().item() for labels in ((y + 1) % 10, y))
    assert trained and on_train - on_test > 0.5, (on_train, on_test)      # the two splits tell apart
    assert accuracy == pytest.approx(on_test)
    assert torch.load(path, weights_only=True)['test_accuracy'] == pytest.approx(on_test)


# ---- cli.prepare_out: the check without the removal -----------------------------------------------

def test_overwrite_check_without_remove_keeps_the_earlier_run(tmp_path):
    """sample.py checks --out before any work with remove=False and removes only once the work is
    under way (train_images: on rank 0 only): a run that fails in between must leave the earlier
    run's files where they were."""
    out = tmp_path / 'run'
    files = ['config.json', 'log.jsonl', 'checkpoints/ckpt_00000004.pt', 'samples/00000004.png', 'notes.txt']
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)

    def listing():
        return sorted(p.relative_to(out).as_posix() for p in out.rglob('*') if p.is_file())
    with pytest.raises(FileExistsError, match='--overwrite'):
        cli.prepare_out(str(out), ti.RUN_FILES, overwrite=False)
    cli.prepare_out(str(out), ti.RUN_FILES, overwrite=True, remove=False)   # the check alone
    assert listing() == sorted(files)
    cli.prepare_out(str(out), ti.RUN_FILES, overwrite=True)                 # the check and the removal
    assert listing() == ['notes.txt']


# ---- pnp.baselines: bicubic at the pixel centres ---------------------------------------------------

def _cubic_weights(t, a=-0.75):
    """Weights of the taps p-1, p, p+1, p+2 at s = p + t (0 <= t < 1) of Keys' cubic convolution
    kernel W(d) = (a+2)|d|^3 - (a+3)|d|^2 + 1 for |d| <= 1, a|d|^3 - 5a|d|^2 + 8a|d| - 4a for
    1 < |d| < 2, 0 beyond (PyTorch's bicubic takes a = -0.75)."""
    def W(d):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return [W(1 + t), W(t), W(1 - t), W(2 - t)]


def _bicubic_rows(h, f):
    """(matrix (n, h), kept rows) of 1D bicubic upsampling by f on the output rows whose four taps lie
    inside 0..h-1 (the border, where PyTorch repeats the edge pixel, is left out). Output pixel i
    covers [i, i+1) of the fine grid; its centre i + 1/2 is the input coordinate
    s = (i + 1/2) / f - 1/2 in units of input pixels whose centres are 0, 1, ... (align_corners=False)."""
    rows, kept = [], []
    for i in range(h * f):
        s = (i + 0.5) / f - 0.5
        p = math.floor(s)
        if p - 1 < 0 or p + 2 > h - 1:
            continue
        row = torch.zeros(h, dtype=torch.float64)
        row[p - 1:p + 3] = torch.tensor(_cubic_weights(s - p), dtype=torch.float64)
        rows.append(row)
        kept.append(i)
    return torch.stack(rows), kept


@pytest.mark.parametrize('factor', [2, 4])
def test_bicubic_baseline_samples_the_pixel_centres(factor):
    """A ramp x = 0.3 i - 0.7 j + 0.1 (32 x 32, 3 channels), averaged in f x f blocks (the sr task's H)
    and upsampled by pnp.baselines. In the interior: (1) the output is the kernel's weighted sum at
    s = (i + 1/2) / f - 1/2; (2) whatever the (symmetric) kernel, the f outputs of a block sit
    symmetrically around its input pixel, so on a ramp their mean is that pixel exactly. With
    align_corners=True (s = i (h-1) / (H-1)) both fail. Keys' a = -0.75 reproduces constants but not
    ramps (a = -0.5 would), so the outputs themselves are not the ramp."""
    H, f = 32, factor
    h = H // f
    i = torch.arange(H, dtype=torch.float64)
    x = (0.3 * i[:, None] - 0.7 * i[None, :] + 0.1).expand(1, 3, H, H)
    y = x.reshape(1, 3, h, f, h, f).mean((3, 5))                           # block means, (1, 3, h, h)
    op = pnp.make_operator(f'sr{f}', (3, H, H))
    torch.testing.assert_close(op.H(x), y, rtol=0, atol=1e-12)
    up = pnp.baselines(y, op)['bicubic']                                   # (1, 3, H, H)
    M, kept = _bicubic_rows(h, f)
    inner = up[..., kept, :][..., kept]
    torch.testing.assert_close(inner, M @ y @ M.T, rtol=0, atol=1e-12)
    blocks = [p for p in range(h) if all(q in kept for q in range(p * f, (p + 1) * f))]
    assert len(blocks) >= 2
    sel = [q for p in blocks for q in range(p * f, (p + 1) * f)]
    means = up[..., sel, :][..., sel].reshape(1, 3, len(blocks), f, len(blocks), f).mean((3, 5))
    torch.testing.assert_close(means, y[..., blocks, :][..., blocks], rtol=0, atol=1e-12)
    assert (inner - x[..., kept, :][..., kept]).abs().max() > 1e-3        # yet not the ramp itself


# ---- toy2d.evaluate: a mode needs 5% of its share ---------------------------------------------------

@pytest.mark.parametrize('few, modes', [(10, 7), (40, 8)])
def test_toy_mode_counts_only_with_five_percent_of_its_share(few, modes, monkeypatch):
    """evaluate counts a mode when at least 5% of the fair share n / 8 of the samples lie within 3 std
    of its centre: 31.25 of 5,000. One mode holding 10 points is missed, one holding 40 found.
    (The energy distances, seconds on 5,000 points and not under test, are skipped.)"""
    monkeypatch.setattr(toy2d, 'energy_distance', lambda x, y: 0.0)
    n = 5000
    a = torch.arange(8) * math.pi / 4
    centres = 2 * torch.stack([a.cos(), a.sin()], 1)                      # radius 2, angles i pi / 4
    counts = [few] + [(n - few) // 7 + (m < (n - few) % 7) for m in range(7)]
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([c + 0.3 * toy2d.STD * torch.randn(m, 2, generator=gen) for c, m in zip(centres, counts)])
    assert len(x) == n
    out = toy2d.evaluate(x, '8gaussians')
    assert out['hq_fraction'] == 1.0 and out['modes'] == modes


# ---- models.save_checkpoint: the temporary file beside the target ----------------------------------

def test_checkpoint_temporary_file_is_written_in_the_target_folder(tmp_path, monkeypatch):
    """os.replace is atomic only within one file system: the temporary file must be made in the
    target's own folder, not in the system's temporary folder (here pointed elsewhere)."""
    elsewhere = tmp_path / 'system_tmp'
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(elsewhere))              # where mkstemp() without dir= goes
    moves, real_replace = [], os.replace

    def recording_replace(src, dst, *a, **kw):
        moves.append((os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, *a, **kw)
    monkeypatch.setattr(os, 'replace', recording_replace)
    target = tmp_path / 'run' / 'checkpoints' / 'ckpt.pt'
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, step=3), target)
    monkeypatch.chdir(target.parent)
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, step=4), 'ckpt_relative.pt')   # a bare file name
    assert [(os.path.dirname(src), dst) for src, dst in moves] == [
        (str(target.parent), str(target)), (str(target.parent), str(target.parent / 'ckpt_relative.pt'))]
    assert models.load_checkpoint(target)['step'] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ['ckpt.pt', 'ckpt_relative.pt']
    assert list(elsewhere.iterdir()) == []


# ---- models.convert_authors_generator: the attention NIN weights ----------------------------------

def _authors_attention(x, p, theirs):
    """The authors' attention block (AttnBlockpp) from its definition, in float64. Their NIN is the
    1x1 map NIN(h) = einsum('bchw,co->bohw', h, W) + b with W of shape (in, out):
        h = GroupNorm(x)  (min(C/4, 32) groups, eps 1e-6);  q, k, v = NIN_0(h), NIN_1(h), NIN_2(h)
        a = softmax over the positions (i, j) of einsum('bchw,bcij->bhwij', q, k) / sqrt(C)
        out = (x + NIN_3(einsum('bhwij,bcij->bchw', a, v))) / sqrt(2)."""
    B, C, H, W = x.shape
    t = lambda name: theirs[f'{p}.{name}'].double()                               # noqa: E731
    h = F.group_norm(x, min(C // 4, 32), t('GroupNorm_0.weight'), t('GroupNorm_0.bias'), eps=1e-6)
    nin = lambda h, j: torch.einsum('bchw,co->bohw', h, t(f'NIN_{j}.W')) + t(f'NIN_{j}.b')[None, :, None, None]  # noqa: E731
    q, k, v = (nin(h, j) for j in range(3))
    a = (torch.einsum('bchw,bcij->bhwij', q, k).reshape(B, H, W, H * W) / math.sqrt(C)).softmax(-1)
    return (x + nin(torch.einsum('bhwij,bcij->bchw', a.reshape(B, H, W, H, W), v), 3)) / math.sqrt(2)


def test_converter_transposes_the_authors_attention_weights():
    """The CIFAR-10 generator's keys (fixtures/authors_ncsnpp_keys.json), random values for its four
    attention blocks (square, asymmetric NIN weights: shapes cannot catch a missing transpose) and
    'meta' tensors for the rest; each attention module of the converted network computes what the
    authors' block computes from the same weights."""
    spec = json.loads((Path(__file__).parent / 'fixtures' / 'authors_ncsnpp_keys.json').read_text())
    spec = spec['generator_cifar10_32']
    attention = [r['prefix'].rstrip('.') for r in spec['all_modules_roles'] if r['class'] == 'AttnBlockpp']
    gen = torch.Generator().manual_seed(0)
    theirs = {}
    for e in spec['state_dict']:
        if e['key'].rsplit('.', 2)[0] in attention:       # all_modules.8.NIN_0.W -> all_modules.8
            theirs[e['key']] = torch.randn(e['shape'], generator=gen) / math.sqrt(e['shape'][0])
        else:
            theirs[e['key']] = torch.empty(e['shape'], device='meta')
    with torch.device('meta'):
        G = models.build_networks('cifar10')[0]
    G.load_state_dict(models.convert_authors_generator(G, theirs), assign=True)
    ours = [m for m in G.modules() if isinstance(m, models.SelfAttention)]   # in forward order, as theirs
    assert len(ours) == len(attention) == 4
    for p, module in zip(attention, ours):
        W = theirs[f'{p}.NIN_0.W']
        assert W.shape[0] == W.shape[1] and (W - W.t()).abs().max() > 0.1
        x = torch.randn(2, W.shape[0], 4, 4, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(module.double()(x), _authors_attention(x, p, theirs), rtol=0, atol=1e-10)


# ---- train_images.step_seed: one noise stream per rank ---------------------------------------------

def test_each_rank_draws_its_own_noise():
    """train() seeds torch with step_seed(seed, rank, step) on every rank and the shared generator
    with step_seed(seed, world_size, step): at every step the ranks' seeds differ from each other and
    from the shared one, and so do their draws; no (rank, step) pair repeats another's seed."""
    world = 4
    for step in range(50):
        assert len({ti.step_seed(0, r, step) for r in range(world + 1)}) == world + 1
    draws = [torch.randn(16, generator=torch.Generator().manual_seed(ti.step_seed(0, r, 7))) for r in range(world + 1)]
    for a in range(world + 1):
        for b in range(a):
            assert (draws[a] - draws[b]).abs().max() > 0.1, (a, b)
    assert len({ti.step_seed(0, r, s) for r in range(8) for s in range(1000)}) == 8000
    assert ti.step_seed(1, 0, 7) != ti.step_seed(0, 0, 7)
    assert ti.step_seed(0, 2, 7) == ti.step_seed(0, 2, 7)                   # a resumed run draws the same


# ---- train_images: the NaN check at the report step, the resume's skip and log cut --------------------

def test_a_term_gone_non_finite_at_the_report_step_itself_stops_the_run(tmp_path):
    """The first bad step equals the step being checked: the check must still stop (a '< step' slip
    would save a checkpoint right after a NaN)."""
    monitor = ti.Monitor(['loss_D', 'loss_G'], torch.device('cpu'))
    for step in (1, 2, 3):
        monitor.add(dict(loss_D=torch.tensor(1.0), loss_G=torch.tensor(float('nan') if step == 3 else 2.0)), step)
    mean, bad = monitor.reduce()
    assert bad == {'loss_G': 3} and mean['loss_D'] == 1.0
    with pytest.raises(FloatingPointError, match='loss_G from step 3'):
        ti.stop_if_bad(bad, 3, ti.RunDir(str(tmp_path)))


def test_a_resumed_epoch_continues_with_exactly_the_next_batch():
    dataset = list(range(40))
    sampler = ti.EpochSampler(torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True,
                                                                  seed=0, drop_last=True))
    sampler.set_epoch(2)
    full = list(sampler)
    batch, done = 4, 3                                   # three batches of epoch 2 were trained before the stop
    sampler.set_epoch(2, skip=done * batch)
    assert list(sampler) == full[done * batch:] and len(sampler) == len(full) - done * batch


def test_resume_keeps_the_log_up_to_the_checkpoint_step_inclusive(tmp_path):
    run = ti.RunDir(str(tmp_path))
    lines = [json.dumps(dict(event='start', step=0))] + [json.dumps(dict(step=s, loss=s)) for s in (5, 10, 15)]
    (tmp_path / 'log.jsonl').write_text('\n'.join(lines) + '\n{"step": 20, "lo')       # the last line cut by a crash
    run.begin(10, dict(event='resume', step=10), dict(config=1), overwrite=False)
    steps = [json.loads(line).get('step') for line in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert steps == [0, 5, 10, 10]                       # start, 5, 10, then the resume record
