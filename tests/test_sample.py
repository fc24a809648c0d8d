"""sample.py: seeded, shard-invariant sampling from a checkpoint; FID and IS arithmetic through
torch-fidelity with a tiny linear feature extractor (closed forms); the figures; clear errors."""
import argparse
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity.defaults import DEFAULTS
from PIL import Image

from conftest import generator_parity
import metrics
import models
import sample
from schedules import make_schedule, sample_rgm

ROOT = Path(__file__).resolve().parents[1]
META = dict(schedule='d', K=4, discretisation='original', posterior=False, nz=8, image_size=32, channels=3)


def _tiny_G(seed=0):
    """The tiny NCSN++ with 0.02 N(0, 1) added to every weight, so that its near-zero layers matter."""
    torch.manual_seed(seed)
    G, D = models.build_networks('tiny')
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in G.parameters():
            p += 0.02 * torch.randn(p.shape, generator=gen)
    return G.eval(), D


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    """A checkpoint of the tiny configuration written as the contract in models.py says; EMA != raw G."""
    G, D = _tiny_G()
    G_raw, _ = _tiny_G(seed=5)
    path = tmp_path_factory.mktemp('run') / 'ckpt.pt'
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, G_kwargs=dict(models.CONFIGS['tiny']['G']),
                                D_kwargs=dict(models.CONFIGS['tiny']['D']), meta=dict(META),
                                G=G_raw.state_dict(), G_ema=G.state_dict(), D=D.state_dict()), path)
    return path


def _run(argv):
    sample.main(sample.build_parser().parse_args(argv))


# ---- sampling: determinism and sharding ---------------------------------------------------

def test_same_seed_same_images_and_chunks_do_not_depend_on_n():
    G, _ = _tiny_G()
    schedule = make_schedule('d', 4)
    a = sample.generate(G, schedule, META, n=5, batch_size=2, seed=7)
    b = sample.generate(G, schedule, META, n=5, batch_size=2, seed=7)
    c = sample.generate(G, schedule, META, n=3, batch_size=2, seed=7)
    d = sample.generate(G, schedule, META, n=5, batch_size=2, seed=8)
    assert a.shape == (5, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert torch.equal(a[:2], c[:2])            # a full chunk is the same whatever n is
    assert not torch.equal(a[2:4], a[:2])       # each chunk has its own stream
    assert (a != d).float().mean() > 0.5        # another seed, other images
    # chunk 1 is Algorithm 3 run with the generator of (seed, 1)
    x0 = sample_rgm(G, schedule, (2, 3, 32, 32), 8, generator=sample.chunk_generator(7, 1))
    assert torch.equal(a[2:4], models.to_uint8(x0))


def test_two_gloo_processes_give_the_same_set_as_one(ckpt, tmp_path):
    args = ['--ckpt', str(ckpt), '--num-samples', '7', '--batch-size', '2', '--seed', '3', '--format', 'npz',
            '--device', 'cpu']
    _run(args + ['--out', str(tmp_path / 'one')])
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(ROOT / 'sample.py'), *args, '--out', str(tmp_path / 'two')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (np.load(tmp_path / d / 'samples.npz')['arr_0'] for d in ('one', 'two'))
    assert one.shape == (7, 32, 32, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, two)
    assert '"world_size": 2' in (tmp_path / 'two' / 'metrics.json').read_text()


def test_threads_flag_sets_and_records_the_cpu_threads(ckpt, tmp_path):
    """--threads sets the process's CPU threads and metrics.json records them beside the speed."""
    before = torch.get_num_threads()
    try:
        for threads, expected in ((1, 1), (0, 2)):       # 0 keeps what the process has (2, set here)
            torch.set_num_threads(2)
            _run(['--ckpt', str(ckpt), '--n', '2', '--batch-size', '2', '--format', 'npz', '--threads', str(threads),
                  '--out', str(tmp_path / str(threads))])
            assert json.loads((tmp_path / str(threads) / 'metrics.json').read_text())['threads'] == expected
    finally:
        torch.set_num_threads(before)


def test_channels_last_samples_the_same_images_to_rounding(ckpt, tmp_path):
    """NHWC (sample.py's default on a CPU) draws the images NCHW draws, up to fp32 rounding: the 4-step chain
    of the shipped Fashion-MNIST model and the tiny one, and the CLI records the layout it used."""
    for G, meta in (models.load_generator(ROOT / 'checkpoints' / 'fashion_kld_d.pt'), (_tiny_G()[0], META)):
        schedule = make_schedule(meta['schedule'], meta['K'])
        shape = (4, meta['channels'], meta['image_size'], meta['image_size'])
        plain = sample.draw(G, schedule, meta, shape, sample.chunk_generator(0, 0))
        nhwc = sample.draw(G.to(memory_format=torch.channels_last), schedule, meta, shape, sample.chunk_generator(0, 0))
        assert (nhwc - plain).abs().max() < 1e-4 and plain.std() > 0.1
    for flag, expected in (([], True), (['--no-channels-last'], False)):
        _run(['--ckpt', str(ckpt), '--n', '2', '--batch-size', '2', '--format', 'npz', *flag,
              '--out', str(tmp_path / str(expected))])
        assert json.loads((tmp_path / str(expected) / 'metrics.json').read_text())['channels_last'] is expected


# ---- checkpoints --------------------------------------------------------------------------

def test_checkpoint_samples_with_right_shape_range_and_lossless_files(ckpt, tmp_path):
    _run(['--ckpt', str(ckpt), '--n', '5', '--batch-size', '4', '--format', 'npz', '--out', str(tmp_path)])
    arr = np.load(tmp_path / 'samples.npz')['arr_0']                      # (N, H, W, C) uint8
    G, meta = models.load_generator(str(ckpt))
    schedule = make_schedule(meta['schedule'], meta['K'], meta['discretisation'])
    x0 = sample_rgm(G, schedule, (4, 3, 32, 32), meta['nz'], generator=sample.chunk_generator(0, 0),
                    noise_scale=0.999)
    assert x0.abs().max() <= 1                  # level 0 is clean: x_0 = G's tanh output, no noise
    np.testing.assert_array_equal(arr[:4], models.to_uint8(x0).permute(0, 2, 3, 1).numpy())
    assert arr.shape == (5, 32, 32, 3) and arr.std() > 1

    _run(['--ckpt', str(ckpt), '--n', '5', '--batch-size', '4', '--format', 'png', '--out', str(tmp_path / 'p')])
    pngs = sorted((tmp_path / 'p' / 'png').iterdir())
    assert [p.name for p in pngs] == [f'{i:06d}.png' for i in range(5)]
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]), arr)   # PNG is lossless
    grid = np.asarray(Image.open(tmp_path / 'p' / 'samples.png'))         # 3 x 2 tiles, 2 px padding
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3)
    np.testing.assert_array_equal(grid[2:34, 2:34], arr[0])


def test_ema_and_raw_weights_and_posterior_flag_change_the_samples(ckpt):
    G_ema, meta = models.open_generator(str(ckpt))
    G_raw, _ = models.open_generator(str(ckpt), ema=False)
    schedule = make_schedule('d', 4)
    a = sample.generate(G_ema, schedule, meta, 2, 2)
    assert torch.equal(a, sample.generate(_tiny_G()[0], schedule, meta, 2, 2))        # the EMA weights by default
    assert (a != sample.generate(G_raw, schedule, meta, 2, 2)).float().mean() > 0.5
    assert (a != sample.generate(G_ema, schedule, dict(meta, posterior=True), 2, 2)).float().mean() > 0.5


def test_missing_corrupt_and_ema_less_checkpoints_give_clear_errors(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        _run(['--ckpt', str(tmp_path / 'nope.pt'), '--out', str(tmp_path)])
    cut = tmp_path / 'cut.pt'
    cut.write_bytes(ckpt.read_bytes()[:len(ckpt.read_bytes()) // 2])
    with pytest.raises(RuntimeError, match='not a readable checkpoint'):
        _run(['--ckpt', str(cut), '--out', str(tmp_path)])
    no_ema = tmp_path / 'no_ema.pt'
    models.save_checkpoint({**torch.load(ckpt, weights_only=True), 'G_ema': None}, no_ema)
    with pytest.raises(KeyError, match='--no-ema'):
        _run(['--ckpt', str(no_ema), '--out', str(tmp_path)])
    _run(['--ckpt', str(no_ema), '--no-ema', '--n', '1', '--out', str(tmp_path / 'raw')])
    assert (tmp_path / 'raw' / 'samples.png').exists()
    with pytest.raises(ValueError, match='only go with --authors-config'):
        _run(['--ckpt', str(ckpt), '--K', '7', '--out', str(tmp_path)])
    with pytest.raises(ValueError, match='--fid needs --reference'):
        _run(['--ckpt', str(ckpt), '--fid', '--out', str(tmp_path / 'fid')])
    with pytest.raises(ValueError, match='--n must be at least 4'):          # precision / recall need k + 1 = 4
        _run(['--ckpt', str(ckpt), '--fid', '--reference', str(tmp_path), '--n', '3', '--out', str(tmp_path / 'fid')])
    assert not (tmp_path / 'fid').exists()                                  # refused before any write


def test_authors_generator_file_is_converted_and_samples(tmp_path):
    parity = generator_parity()
    netG = tmp_path / 'netG_1200.pth'           # as DataParallel saves it
    torch.save({f'module.{k}': v for k, v in parity['G_state_dict'].items()}, netG)
    G, meta = models.open_generator(str(netG), authors_config='tiny')
    assert (meta['schedule'], meta['K'], meta['discretisation'], meta['nz']) == ('d', 4, 'original', 8)
    x, k, z = parity['G_inputs']['x'], parity['G_inputs']['t'], parity['G_inputs']['z']
    with torch.no_grad():
        torch.testing.assert_close(G(x, k, z), parity['G_output'], rtol=0, atol=1e-5)
    content = tmp_path / 'content.pth'          # their resume file: netG_dict beside a pickled Namespace
    torch.save({'netG_dict': parity['G_state_dict'], 'args': argparse.Namespace(nz=8)}, content)
    _run(['--ckpt', str(content), '--authors-config', 'tiny', '--schedule', 'sr', '--K', '4', '--n', '2',
          '--format', 'npz', '--out', str(tmp_path / 'out')])
    assert np.load(tmp_path / 'out' / 'samples.npz')['arr_0'].shape == (2, 32, 32, 3)
    ours = tmp_path / 'ours.pt'
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, G_kwargs={}, meta={}, G_ema={}), ours)
    with pytest.raises(ValueError, match='one of our checkpoints'):
        models.open_generator(str(ours), authors_config='tiny')


# ---- figures ------------------------------------------------------------------------------

def test_figures_trajectory_levels_and_z_spread(tmp_path):
    G, _ = _tiny_G()
    schedule = make_schedule('d', 4)
    xs = sample.trajectory_figure(G, schedule, META, tmp_path / 't.png', n=3, generator=torch.Generator().manual_seed(0))
    assert len(xs) == 5 and 0.9 < xs[0].std() < 1.1 and xs[-1].abs().max() <= 1    # x_K ~ N(0, I) ... x_0 clean
    assert Image.open(tmp_path / 't.png').size == (2 + 5 * 34, 2 + 3 * 34)           # rows: samples, columns: levels
    x0 = xs[-1][:1]
    spread = sample.z_figure(G, schedule, META, x0, tmp_path / 'z.png', n_z=3, generator=torch.Generator().manual_seed(1))
    assert spread.shape == (4,) and (spread > 1e-3).all()                 # this G uses z at every level
    assert Image.open(tmp_path / 'z.png').size == (2 + 4 * 34, 2 + 4 * 34)   # row k: x_k, then 3 restorations
    no_z = sample.z_figure(lambda x, k, z: x.tanh(), schedule, META, x0, tmp_path / 'z0.png', n_z=3)
    assert torch.equal(no_z, torch.zeros(4))                              # a G that ignores z: one restoration


# ---- FID and IS through torch-fidelity, with a tiny seeded feature extractor ----------------

class LinearFeatures(torch_fidelity.FeatureExtractorBase):
    """uint8 images (N, 3, H, W), v = their first 12 values: features (v - 128) / 64 @ W (12 x 4,
    seeded), logits v[:10] / 10."""
    W = torch.randn(12, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ('features', 'logits')

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {'fid': 'features', 'kid': 'features', 'prc': 'features', 'isc': 'logits'}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        v = x.flatten(1)[:, :12].double()
        out = {'features': (v - 128) / 64 @ self.W, 'logits': v[:, :10] / 10}
        return tuple(out[name] for name in self.features_list)


@pytest.fixture(scope='module')
def linear_fid():
    if 'rgm-test-linear' not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor('rgm-test-linear', LinearFeatures)
    return lambda images, reference=None, **kw: metrics.fidelity_metrics(
        images, reference, feature_extractor='rgm-test-linear', **kw)


def _gaussian_images(n, mean, cov, seed):
    """n images (n, 3, 2, 2) whose 12 values are N(mean, cov), rounded to uint8 (no clipping)."""
    g = torch.Generator().manual_seed(seed)
    v = mean + torch.randn(n, 12, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    assert v.min() > 0 and v.max() < 255
    return v.round().to(torch.uint8).view(n, 3, 2, 2)


def _sqrtm(S):
    vals, vecs = torch.linalg.eigh(S)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(linear_fid):
    X = _gaussian_images(4000, torch.full((12,), 128., dtype=torch.float64), 400 * torch.eye(12, dtype=torch.float64), seed=0)
    assert abs(linear_fid(X, X)['fid']) < 1e-8
    g = torch.Generator().manual_seed(1)
    fids = [linear_fid((X + s * torch.randn(X.shape, generator=g)).round().clamp(0, 255).to(torch.uint8), X)['fid']
            for s in (2, 8, 16, 32)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_fid_matches_the_closed_form_for_gaussians(linear_fid):
    """FID(N(m1, S1), N(m2, S2)) = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), features = A v + b."""
    g = torch.Generator().manual_seed(2)
    A1, A2 = (torch.randn(12, 12, generator=g, dtype=torch.float64) for _ in range(2))
    cov1, cov2 = 300 * A1 @ A1.T / 12 + 20 * torch.eye(12), 100 * A2 @ A2.T / 12 + 20 * torch.eye(12)
    mean1, mean2 = torch.full((12,), 128., dtype=torch.float64), 128 + 5 * torch.randn(12, generator=g, dtype=torch.float64)
    X, Y = _gaussian_images(40000, mean1, cov1, seed=3), _gaussian_images(40000, mean2, cov2, seed=4)
    W = LinearFeatures.W / 64
    rounding = torch.eye(12, dtype=torch.float64) / 12                   # uint8 rounding adds U(-1/2, 1/2)
    m1, m2 = (mean1 - 128) @ W, (mean2 - 128) @ W
    S1, S2 = W.T @ (cov1 + rounding) @ W, W.T @ (cov2 + rounding) @ W
    r1 = _sqrtm(S1)
    exact = float((m1 - m2).square().sum() + torch.trace(S1 + S2 - 2 * _sqrtm(r1 @ S2 @ r1)))  # tr (S1 S2)^(1/2)
    assert float((m1 - m2).square().sum()) < 0.25 * exact               # mostly the covariance term
    assert linear_fid(X, Y, prc=False)['fid'] == pytest.approx(exact, rel=0.03)  # Monte Carlo error ~1% at n = 40000


def _linear_features(images):
    return (images.flatten(1)[:, :12].double() - 128) / 64 @ LinearFeatures.W


def test_kid_and_precision_recall_beside_fid_are_those_of_the_same_features(linear_fid):
    """With a reference, FID comes with KID and precision / recall computed by torch-fidelity in the FID's
    own features (not VGG-16's): KID equal to metrics.kid on those features and, for a set against itself,
    to its closed form; precision / recall equal to the k-NN rule evaluated on dense distance matrices, 1 for
    a set against itself; a set inside a corner of the reference is precise and covers little."""
    eye = torch.eye(12, dtype=torch.float64)
    X = _gaussian_images(1000, torch.full((12,), 128., dtype=torch.float64), 400 * eye, seed=7)
    Y = _gaussian_images(600, torch.full((12,), 128., dtype=torch.float64), 400 * eye, seed=8)
    got = linear_fid(Y, X)
    fx, fy = _linear_features(X), _linear_features(Y)
    assert (got['kid_mean'], got['kid_std']) == pytest.approx(metrics.kid(fy, fx, seed=DEFAULTS['rng_seed']), rel=1e-9)
    # precision / recall from the dense distance matrices: a point is covered by the other set when it lies
    # within some member's radius, the distance from that member to its 3rd nearest neighbour in its own set
    radius = {name: torch.cdist(f, f).sort(dim=1).values[:, 3] for name, f in (('x', fx), ('y', fy))}
    d_yx = torch.cdist(fy, fx)
    precision = (d_yx <= radius['x'][None, :]).any(1).double().mean()
    recall = (d_yx.T <= radius['y'][None, :]).any(1).double().mean()
    assert (got['precision'], got['recall']) == pytest.approx((float(precision), float(recall)), abs=1e-6)
    # one distribution: KID ~ 0 within its spread over subsets (they overlap, so not within kid_std / 10)
    assert got['precision'] > 0.8 and got['recall'] > 0.8 and abs(got['kid_mean']) < 3 * got['kid_std']
    same = linear_fid(X, X)               # every subset is all of X: MMD_u^2 = 2 (S - D) / (m (m-1)) - 2 S / m^2
    k = (fx @ fx.T / fx.shape[1] + 1) ** 3                              # S: the kernel matrix's sum, D: its trace
    m, S, D = len(fx), k.sum(), k.trace()
    assert same['kid_mean'] == pytest.approx(float(2 * (S - D) / (m * (m - 1)) - 2 * S / m ** 2), rel=1e-9)
    assert same['precision'] == same['recall'] == 1 and -0.1 < same['kid_mean'] < 0 and same['kid_std'] < 1e-12
    corner = X[fx[:, 0] > fx[:, 0].quantile(0.9)]                      # the 10% of X furthest along one feature
    part = linear_fid(corner, X)
    assert part['precision'] == 1 and part['recall'] < 0.3 and part['kid_mean'] > 10 * got['kid_std']
    with pytest.raises(ValueError, match='at least 4'):
        linear_fid(X[:3], X)


def test_inception_score_closed_forms(linear_fid):
    g = torch.Generator().manual_seed(5)
    n = 1000
    flat = torch.randint(0, 256, (n, 12), generator=g, dtype=torch.uint8)
    uniform = flat.clone()
    uniform[:, :10] = 77                                                 # equal logits: p(y|x) uniform
    assert linear_fid(uniform.view(n, 3, 2, 2), isc=True)['is_mean'] == pytest.approx(1, abs=1e-12)
    confident = flat.clone()
    confident[:, :10] = 0
    confident[torch.arange(n), torch.arange(n) % 10] = 255              # one sure class each, evenly spread
    assert linear_fid(confident.view(n, 3, 2, 2), isc=True, isc_splits=1)['is_mean'] == pytest.approx(10, rel=1e-6)
    # general case: exp(E_x KL(p(y|x) || p(y))) from the same logits, by hand
    p = torch.softmax(flat[:, :10].double() / 10, dim=1)
    expected = torch.exp((p * (p.log() - p.mean(0).log())).sum(1).mean())
    got = linear_fid(flat.view(n, 3, 2, 2), isc=True, isc_splits=1)['is_mean']
    assert got == pytest.approx(float(expected), rel=1e-9) and got > 1.001
    with pytest.raises(ValueError, match='10 splits'):                    # fewer samples than splits: NaN otherwise
        linear_fid(flat[:9].view(9, 3, 2, 2), isc=True)


def test_missing_inception_weights_say_which_file_and_where(tmp_path, monkeypatch):
    name = 'weights-inception-2015-12-05-6726825d.pth'
    with pytest.raises(FileNotFoundError, match=name):
        metrics.inception_weights(str(tmp_path / 'absent.pth'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no internet')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(RuntimeError, match=str(tmp_path / 'hub' / 'checkpoints' / name)):
        metrics.inception_weights()
    (tmp_path / 'hub' / 'checkpoints' / name).write_bytes(b'')
    assert metrics.inception_weights() == str(tmp_path / 'hub' / 'checkpoints' / name)


def test_cli_caches_the_reference_once_and_writes_fid_and_is(ckpt, tmp_path, monkeypatch):
    """The --fid --is path of main() with the linear extractor standing in for Inception."""
    monkeypatch.setitem(torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY, 'inception-v3-compat', LinearFeatures)
    monkeypatch.setattr(metrics, 'inception_weights', lambda path=None: 'unused')
    (tmp_path / 'ref').mkdir()
    g = torch.Generator().manual_seed(6)
    for i in range(12):
        Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(
            tmp_path / 'ref' / f'{i}.png')
    argv = ['--ckpt', str(ckpt), '--n', '10', '--batch-size', '5', '--fid', '--is', '--reference', str(tmp_path / 'ref'),
            '--fid-cache', str(tmp_path / 'cache')]
    _run(argv + ['--out', str(tmp_path / 'a')])
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / 'cache').iterdir()}
    assert any('stat-fid' in p.name for p in cached) and any('features' in p.name for p in cached)
    _run(argv + ['--out', str(tmp_path / 'b')])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'cache').iterdir()} == cached    # read, not rewritten
    a, b = (json.loads((tmp_path / d / 'metrics.json').read_text()) for d in 'ab')
    G, _ = models.open_generator(str(ckpt))
    images = sample.generate(G, make_schedule('d', 4), META, 10, 5)               # the same samples, scored directly
    ref = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / 'ref' / name))).permute(2, 0, 1)
                       for name in sorted(f'{i}.png' for i in range(12))])     # torch-fidelity's order: KID's subsets
    direct = metrics.fidelity_metrics(images, ref, isc=True)
    assert a['fid'] == b['fid'] == pytest.approx(direct['fid'], rel=1e-9) and a['fid'] > 0
    for key in ('kid_mean', 'kid_std', 'precision', 'recall'):      # in the same (stand-in) features as FID
        assert a[key] == b[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12)
    assert a['is_mean'] == pytest.approx(direct['is_mean'], rel=1e-9)
    assert a['nfe'] == 4 and a['n'] == 10 and a['reference_is'] > 1 and a['images_per_second'] > 0
