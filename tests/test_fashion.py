"""Fashion-MNIST end to end without the package or the network: the IDX reader against bytes written
here, the 32 x 32 padding, the MMSE baseline's step against its formula, the Frechet distance against
Gaussian closed forms, the classifier cache, and the presets' pipeline (train -> sample -> PnP) on a
tiny data set in the original format."""
import argparse
import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

import data
import metrics
import pnp
import sample
import train_images as ti
from schedules import make_schedule


def write_idx(folder, split, images, labels, gz=True):
    """Write a split in the original IDX format (big-endian header, then the bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    blobs = {f'{split}-images-idx3-ubyte': struct.pack('>IIII', 2051, n, rows, cols) + images.astype(np.uint8).tobytes(),
             f'{split}-labels-idx1-ubyte': struct.pack('>II', 2049, n) + labels.astype(np.uint8).tobytes()}
    for name, blob in blobs.items():
        if gz:
            with gzip.open(folder / f'{name}.gz', 'wb') as f:
                f.write(blob)
        else:
            (folder / name).write_bytes(blob)


def tiny_fashion(folder, n_train=64, n_test=32, seed=0):
    """Items as 28 x 28 images: class c is a bright bar in row band c (so a classifier can learn it)."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('t10k', n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c:4 + 2 * c, 4:24] = 255
        write_idx(folder, split, images, labels)
    return folder


# ---- data -------------------------------------------------------------------

@pytest.mark.parametrize('gz', [True, False])
def test_idx_reader_returns_the_written_bytes(tmp_path, gz):
    images = np.arange(3 * 5 * 4).reshape(3, 5, 4) % 256
    labels = np.array([7, 0, 9])
    write_idx(tmp_path, 'train', images, labels, gz=gz)
    ext = '.gz' if gz else ''
    assert np.array_equal(data.read_idx(str(tmp_path / f'train-images-idx3-ubyte{ext}')), images)
    assert np.array_equal(data.read_idx(str(tmp_path / f'train-labels-idx1-ubyte{ext}')), labels)


def test_idx_reader_rejects_foreign_and_truncated_files(tmp_path):
    (tmp_path / 'bad').write_bytes(struct.pack('>II', 1234, 1) + b'\0')
    with pytest.raises(ValueError, match='magic number 1234'):
        data.read_idx(str(tmp_path / 'bad'))
    (tmp_path / 'short').write_bytes(struct.pack('>IIII', 2051, 2, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match='cut short'):
        data.read_idx(str(tmp_path / 'short'))


def test_images_are_padded_to_32_with_background_and_scaled(tmp_path):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (6, 28, 28)), np.arange(6)
    write_idx(tmp_path, 'train', images, labels)
    ds = data.FashionMNIST(str(tmp_path), train=True, download=False)
    x, y = ds[4]
    assert x.shape == (1, 32, 32) and y == 4
    assert torch.equal(x[0, 2:30, 2:30], torch.tensor(images[4], dtype=torch.float32) / 127.5 - 1)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[0][border] == -1).all()                                  # black background -> -1
    xs, ys = ds.tensors(3)
    assert torch.equal(xs[2], ds[2][0]) and ys.tolist() == [0, 1, 2]


def test_missing_files_say_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(data, 'FASHION_SYSTEM_DIR', str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        data.FashionMNIST(str(tmp_path), train=False, download=False)


def test_data_dir_comes_before_the_system_folder(tmp_path, monkeypatch):
    tiny_fashion(tmp_path / 'system', n_train=10)
    tiny_fashion(tmp_path / 'mine', n_train=20)
    monkeypatch.setattr(data, 'FASHION_SYSTEM_DIR', str(tmp_path / 'system'))
    assert len(data.FashionMNIST(str(tmp_path / 'mine'))) == 20
    assert len(data.FashionMNIST(str(tmp_path / 'elsewhere'), download=False)) == 10   # the system copy


# ---- the MMSE baseline ------------------------------------------------------

class ConstantG(torch.nn.Module):
    """G(x_next, k, z) = c whatever its input; records what it was given."""

    def __init__(self, shape):
        super().__init__()
        self.c = torch.nn.Parameter(torch.randn(shape))
        self.calls = []

    def forward(self, x_next, k, z=None):
        self.calls.append((x_next, k, z))
        return self.c.expand(x_next.shape[0], *self.c.shape)


def test_mmse_step_is_the_squared_error_to_x0_without_z():
    """loss = mean_b ||c - x0_b||^2 exactly, G gets no z and levels k in 0..K-1, and one SGD step moves
    c by -lr * 2 * mean_b (c - x0_b), the gradient of that loss."""
    torch.manual_seed(0)
    s, B = make_schedule('d', 4), 256
    x0 = torch.rand(B, 1, 4, 4) * 2 - 1
    G = ConstantG((1, 4, 4))
    c0 = G.c.detach().clone()
    opt = torch.optim.SGD(G.parameters(), lr=0.1)
    out = ti.mmse_step(G, opt, x0, s)
    assert out['mmse'].item() == pytest.approx((c0 - x0).pow(2).flatten(1).sum(1).mean().item(), rel=1e-6)
    (x_next, k, z), = G.calls
    assert z is None and k.min() >= 0 and k.max() <= 3 and len(k.unique()) == 4
    assert torch.allclose(G.c.detach(), c0 - 0.1 * 2 * (c0 - x0).mean(0), atol=1e-6)
    # x_next is x0 pushed to level k + 1: (x_next - mean) / std is standard normal
    eps = (x_next - s.mean(x0, k + 1)) / s.std(k + 1).view(-1, 1, 1, 1)
    assert abs(eps.mean().item()) < 0.05 and eps.std().item() == pytest.approx(1, abs=0.05)


def test_mmse_rejects_a_latent_and_posterior(tmp_path):
    with pytest.raises(ValueError, match='without a latent z'):
        ti.main(ti.parse_args(['--preset', 'fashion_mmse_d', '--nz', '8', '--out', str(tmp_path / 'r')]))
    with pytest.raises(ValueError, match='Algorithm 3 only'):
        ti.main(ti.parse_args(['--preset', 'fashion_mmse_d', '--posterior', '--out', str(tmp_path / 'r')]))
    assert not (tmp_path / 'r').exists()


# ---- Frechet distance and the classifier ------------------------------------

def test_frechet_distance_matches_the_formula_on_the_empirical_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 6)), rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 1.5
    mu1, mu2, S1, S2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(S1 + S2 - 2 * linalg.sqrtm(S1 @ S2).real)
    assert metrics.frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_gaussians_approaches_the_closed_form():
    """N(m1, diag(s1^2)) vs N(m2, diag(s2^2)): FD = ||m1 - m2||^2 + sum (s1 - s2)^2."""
    torch.manual_seed(0)
    m1, m2 = torch.tensor([0., 1., -1., 2.]), torch.tensor([1., 1., 0., 0.])
    s1, s2 = torch.tensor([1., 2., 0.5, 1.]), torch.tensor([1., 1., 1.5, 3.])
    a, b = m1 + s1 * torch.randn(200_000, 4), m2 + s2 * torch.randn(200_000, 4)
    closed = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert metrics.frechet_distance(a.double(), b.double()) == pytest.approx(closed.item(), rel=0.01)
    assert metrics.frechet_distance(a[:100_000].double(), a[100_000:].double()) < 1e-3


def test_class_shares_count_the_predictions():
    assert metrics.class_shares(torch.tensor([0, 0, 3, 9]), 10) == [0.5, 0, 0, 0.25] + [0] * 5 + [0.25]


def test_classifier_is_trained_once_then_read_from_its_cache(tmp_path, monkeypatch):
    folder = tiny_fashion(tmp_path / 'fm', n_train=200, n_test=50)
    path = tmp_path / 'cache' / 'clf.pt'
    net, acc, trained = metrics.get_classifier(str(path), str(folder), progress=False, train=True, epochs=6,
                                               batch_size=20)
    assert trained and path.is_file() and acc > 0.9                   # the bars are easy to tell apart

    def no_training(*a, **k):
        raise AssertionError('the cached classifier was trained again')
    monkeypatch.setattr(metrics, 'train_classifier', no_training)
    net2, acc2, trained2 = metrics.get_classifier(str(path), str(folder))
    assert not trained2 and acc2 == acc
    x = data.FashionMNIST(str(folder), train=False).tensors()[0]
    assert torch.equal(net(x), net2(x))
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match='delete it'):
        metrics.get_classifier(str(path), str(folder))


# ---- the presets' pipeline on a tiny data set -------------------------------

@pytest.fixture(scope='module')
def fashion_runs(tmp_path_factory):
    """A few steps of each Fashion-MNIST preset on 64 images in IDX format, and a classifier."""
    tmp = tmp_path_factory.mktemp('fashion')
    folder = tiny_fashion(tmp / 'fm')
    runs = {}
    for prior in ('kld', 'mmse'):
        out = tmp / prior
        ti.main(ti.parse_args(['--preset', f'fashion_{prior}_d', '--data-dir', str(folder), '--out', str(out),
                               '--max-steps', '4', '--log-every', '2', '--ckpt-every', '4', '--sample-every', '4',
                               '--n-samples', '4', '--device', 'cpu', '--threads', '1']))
        runs[prior] = out / 'checkpoints' / 'ckpt_00000004.pt'
    metrics.get_classifier(str(tmp / 'clf.pt'), str(folder), progress=False, train=True, epochs=1)
    return tmp, folder, runs


def test_presets_train_one_channel_models_and_the_baseline_has_no_z_and_no_D(fashion_runs):
    tmp, _, runs = fashion_runs
    kld, mmse = (torch.load(runs[p], weights_only=True) for p in ('kld', 'mmse'))
    assert kld['meta']['channels'] == mmse['meta']['channels'] == 1
    assert kld['meta']['nz'] > 0 and kld['D'] is not None
    assert mmse['meta']['nz'] == 0 and mmse['D'] is None and mmse['meta']['prior'] == 'mmse'
    log = [json.loads(line) for line in (tmp / 'mmse' / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log[1:]] == [2, 4] and all(np.isfinite(r['mmse']) for r in log[1:])
    assert (tmp / 'mmse' / 'samples' / '00000004.png').is_file()


@pytest.mark.parametrize('prior', ['kld', 'mmse'])
def test_sample_scores_fashion_checkpoints_with_the_classifier(fashion_runs, prior):
    tmp, folder, runs = fashion_runs
    out = tmp / f'samples_{prior}'
    sample.main(sample.build_parser().parse_args([
        '--ckpt', str(runs[prior]), '--n', '20', '--batch-size', '10', '--out', str(out), '--figures',
        '--data-dir', str(folder), '--classifier', str(tmp / 'clf.pt'), '--device', 'cpu']
        + (['--versus', str(runs['mmse'])] if prior == 'kld' else [])))
    summary = json.loads((out / 'metrics.json').read_text())
    assert summary['n_samples'] == 20 and summary['n_reference'] == 32 and summary['fd'] > 0
    assert summary['fd_floor'] >= 0 and sum(summary['class_shares'].values()) == pytest.approx(1)
    assert (out / 'trajectory.png').is_file()
    assert (out / 'z_role.png').is_file() == (prior == 'kld')         # the MMSE model has no z
    assert (out / 'versus.png').is_file() == (prior == 'kld')


def test_pnp_restores_fashion_test_images(fashion_runs):
    tmp, folder, runs = fashion_runs
    out = tmp / 'pnp'
    pnp.main(pnp.build_parser().parse_args([
        '--task', 'sr2', '--ckpt', str(runs['kld']), '--dataset', 'fashion_mnist', '--data-dir', str(folder),
        '--n', '3', '--out', str(out), '--M', '1']))
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['n'] == 3 and set(summary['mean']) == {'pinv', 'bicubic', 'rgm'}
    with pytest.raises(ValueError, match='colorization needs a colour model'):
        pnp.main(pnp.build_parser().parse_args([
            '--task', 'color', '--ckpt', str(runs['kld']), '--dataset', 'fashion_mnist', '--data-dir', str(folder),
            '--n', '2', '--out', str(tmp / 'pnp_color')]))
    assert not (tmp / 'pnp_color').exists()


def test_pnp_tune_ranks_settings_on_training_images(fashion_runs, capsys):
    tmp, folder, runs = fashion_runs
    pnp.main(pnp.build_parser().parse_args([
        '--tune', '--ckpt', str(runs['kld']), '--dataset', 'fashion_mnist', '--data-dir', str(folder), '--task', 'sr2',
        '--n', '4', '--M', '1', '2', '--lam', '0.1', '1.0', '--alpha', '0.5', '--show', '4', '--device', 'cpu']))
    out = capsys.readouterr().out
    rows = [line.split('|') for line in out.splitlines() if line.startswith('| ') and line[2].isdigit()]
    psnrs = [float(r[4]) for r in rows]
    assert len(rows) == 4 and psnrs == sorted(psnrs, reverse=True)            # best first
    best = rows[0]
    assert f'best: --M {best[1].strip()} --lam {best[2].strip()} --alpha {best[3].strip()}' in out
    # The pseudo-inverse baseline of 2x super-resolution, computed here without pnp.py: each 2x2 block
    # replaced by its mean (no noise for sr2), PSNR with peak 1 per image, averaged.
    x = (data.FashionMNIST(folder, train=True).tensors(4)[0] + 1) / 2
    blocks = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode='nearest')
    expected = (10 * torch.log10(1 / (blocks.double() - x.double()).square().flatten(1).mean(1))).mean().item()
    assert f'pinv {expected:.2f}' in out


def test_without_the_data_set_sample_scores_from_the_statistics_in_the_classifier_file(fashion_runs, tmp_path,
                                                                                      monkeypatch):
    """The shipped-classifier path: the test set's mean, covariance, floor and (fp16) features stored in
    the classifier file give the FD and floor that the images themselves give."""
    tmp, folder, runs = fashion_runs
    net, accuracy = metrics.load_classifier(str(tmp / 'clf.pt'))
    test = data.FashionMNIST(str(folder), train=False).images
    ref = metrics.reference_of(net, test, data.FashionMNIST(str(folder), train=True).images[:len(test)])
    ref['features'] = ref['features'].half()
    metrics.save_classifier(net, accuracy, str(tmp_path / 'shipped.pt'), reference=ref)
    common = ['--ckpt', str(runs['kld']), '--n', '20', '--batch-size', '10', '--classifier', str(tmp_path / 'shipped.pt'),
              '--device', 'cpu']
    sample.main(sample.build_parser().parse_args(common + ['--data-dir', str(folder), '--out', str(tmp_path / 'a')]))
    monkeypatch.setattr(data, 'FASHION_SYSTEM_DIR', str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    sample.main(sample.build_parser().parse_args(common + ['--data-dir', str(tmp_path / 'empty'), '--out',
                                                           str(tmp_path / 'b')]))
    a, b = (json.loads((tmp_path / d / 'metrics.json').read_text()) for d in 'ab')
    assert 'stored in' in b['reference'] and a['reference'] == '32 test images'
    assert b['fd'] == pytest.approx(a['fd'], rel=1e-9) and b['fd_floor'] == pytest.approx(a['fd_floor'], rel=1e-9)
    assert b['n_reference'] == a['n_reference'] == 32 and b['class_shares'] == a['class_shares']
    assert b['kid_mean'] == pytest.approx(a['kid_mean'], abs=1e-3)          # fp16 features


def test_the_floor_at_a_small_n_is_scored_against_the_whole_test_set(fashion_runs):
    """reference_scores(n, n_test): n training images against n_test test images (the runner's floor of
    its 500-sample table), its FD equal to the Frechet distance of the two feature sets computed here."""
    tmp, folder, _ = fashion_runs
    real = metrics.reference_scores(str(tmp / 'clf.pt'), str(folder), n=8, progress=False, n_test=32)
    floor = real['floor']
    assert floor['n_samples'] == 8 and floor['n_reference'] == 32
    net, _ = metrics.load_classifier(str(tmp / 'clf.pt'))
    f_train, _ = metrics.run_classifier(net, data.FashionMNIST(str(folder), train=True).images[:8])
    f_test, _ = metrics.run_classifier(net, data.FashionMNIST(str(folder), train=False).images)
    assert floor['fd'] == pytest.approx(metrics.frechet_distance(f_train, f_test), rel=1e-9)
    assert real['blur5']['fd'] > floor['fd']
