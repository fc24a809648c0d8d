"""The headline data paths read from files in their real formats, built tiny: LSUN as an LMDB database
of WebP images (read without writing anything outside --out), CIFAR-10 as torchvision's
cifar-10-batches-py pickles trained under torchrun, and a CelebA-HQ-style folder of JPEGs."""
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import train_images as ti

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))


def test_lsun_is_read_from_an_lmdb_of_webp_images_in_key_order(tmp_path, monkeypatch):
    lmdb = pytest.importorskip('lmdb')
    path = tmp_path / 'lsun' / 'church_outdoor_train_lmdb'
    images = {}
    path.parent.mkdir()
    with lmdb.open(str(path), map_size=2**24) as env, env.begin(write=True) as txn:
        for key in (b'c3', b'a1', b'b2', b'd4'):                # stored sorted: a1, b2, c3, d4
            pixels = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format='WEBP', lossless=True)
            txn.put(key, buf.getvalue())
            images[key] = pixels
    cwd, stored = tmp_path / 'cwd', snapshot(path)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ds = data.build_dataset('lsun_church', str(tmp_path / 'lsun'), image_size=16)
    assert len(ds) == 4 and ds.keys == [b'a1', b'b2', b'c3', b'd4']
    # resize the short side to 16, centre crop 16 x 16, to [-1, 1]: the same transform on the decoded pixels
    x, label = ds[1]
    expected = data.transforms.CenterCrop(16)(data.transforms.Resize(16)(Image.fromarray(images[b'b2'])))
    expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 127.5 - 1
    assert label == 0 and x.shape == (3, 16, 16)
    torch.testing.assert_close(x, expected, atol=1 / 127.5 + 1e-6, rtol=0)   # one grey level (rounding)
    assert pickle.loads(pickle.dumps(ds))[2][0].shape == (3, 16, 16)        # as a data-loading process gets it
    assert snapshot(cwd) == [] and snapshot(path) == stored            # nothing written beside it, nor in it
    assert len(data.LMDBImages(str(path), ds.transform, limit=2)) == 2       # the authors' first-n subset
    # trains from it, writing into --out only
    out = tmp_path / 'run'
    ti.main(ti.parse_args(['--preset', 'tiny', '--dataset', 'lsun_church', '--data-dir', str(tmp_path / 'lsun'),
                           '--image-size', '16', '--batch-size', '4', '--max-steps', '2', '--device', 'cpu',
                           '--out', str(out)]))
    assert ti.checkpoints(out / 'checkpoints') and snapshot(cwd) == []


def test_a_broken_image_in_the_lmdb_names_its_key(tmp_path):
    lmdb = pytest.importorskip('lmdb')
    path = tmp_path / 'church_outdoor_train_lmdb'
    with lmdb.open(str(path), map_size=2**20) as env, env.begin(write=True) as txn:
        txn.put(b'k0', b'not an image')
    ds = data.LMDBImages(str(path), lambda im: im)
    with pytest.raises(OSError, match="key b'k0'"):
        ds[0]
    with pytest.raises(FileNotFoundError, match='not a readable LMDB'):
        data.LMDBImages(str(tmp_path / 'nothing'), lambda im: im)


def write_cifar10(root, n=8):
    """torchvision's cifar-10-batches-py layout: five training batches, a test batch and batches.meta,
    each a pickled dict with 'data' (N, 3072) uint8 rows (R, G, B planes) and 'labels' (Python 2 pickles,
    whose str keys torchvision reads back as str with encoding='latin1')."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        batch = {'data': RNG.integers(0, 256, (n, 3072), dtype=np.uint8), 'labels': [int(v) for v in RNG.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / 'batches.meta').write_bytes(pickle.dumps({'label_names': [f'c{i}' for i in range(10)]}, protocol=2))
    return folder


# torchvision checks each batch against the real archive's md5, which no stand-in can match: this
# startup file (on PYTHONPATH) keeps the check that the file is there and drops the md5, nothing else
SKIP_MD5 = ('import os, torchvision.datasets.cifar as c\n'
            'c.check_integrity = lambda path, md5=None: os.path.isfile(path)\n')


def test_torchrun_trains_cifar10_from_the_python_batches(tmp_path, monkeypatch):
    write_cifar10(tmp_path / 'cifar')
    (tmp_path / 'site').mkdir()
    (tmp_path / 'site' / 'sitecustomize.py').write_text(SKIP_MD5)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'site'), OMP_NUM_THREADS='1')
    out = tmp_path / 'run'
    run = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1',
                          'train_images.py', '--preset', 'tiny', '--dataset', 'cifar10', '--data-dir',
                          str(tmp_path / 'cifar'), '--image-size', '16', '--batch-size', '4', '--max-steps', '2',
                          '--workers', '0', '--device', 'cpu', '--out', str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ti.checkpoints(out / 'checkpoints') and json.loads((out / 'config.json').read_text())['dataset'] == 'cifar10'
    # the images it read are the pickled rows: 40 training images (5 batches of 8), planes to (H, W, C)
    import torchvision.datasets.cifar as c
    monkeypatch.setattr(c, 'check_integrity', lambda path, md5=None: os.path.isfile(path))
    ds = data.cifar10(str(tmp_path / 'cifar'), download=False)
    first = pickle.loads((tmp_path / 'cifar' / 'cifar-10-batches-py' / 'data_batch_1').read_bytes())['data'][0]
    assert len(ds) == 40 and np.array_equal(np.asarray(ds[0][0]), first.reshape(3, 32, 32).transpose(1, 2, 0))


def test_a_celeba_hq_style_folder_of_jpegs_trains(tmp_path):
    folder = tmp_path / 'celeba_hq' / 'train' / 'female'
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f'{i:05d}.jpg', quality=95)
    out = tmp_path / 'run'
    ti.main(ti.parse_args(['--preset', 'tiny', '--dataset', 'celeba_hq', '--data-dir', str(tmp_path / 'celeba_hq'),
                           '--image-size', '16', '--batch-size', '4', '--max-steps', '2', '--device', 'cpu',
                           '--out', str(out)]))
    assert ti.checkpoints(out / 'checkpoints')


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_an_exif_orientation_is_applied_as_a_viewer_shows_the_image(tmp_path, fmt):
    """A phone's JPEG stores its pixels unrotated with an EXIF orientation (6: turn 90 degrees clockwise
    to view); pnp.py restored such an image sideways."""
    pixels = np.zeros((8, 12, 3), dtype=np.uint8)
    pixels[:, :3] = 255                                       # a white band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f'phone.{fmt.lower()}'
    Image.fromarray(pixels).save(path, format=fmt, exif=exif, **({'quality': 100} if fmt == 'JPEG' else {}))
    shown = np.asarray(data.open_image(path, 'RGB')).astype(int)
    assert shown.shape == (12, 8, 3)                          # upright: taller than wide
    expected = np.rot90(pixels, k=-1).astype(int)             # turned clockwise: the band at the top
    assert np.abs(shown - expected).max() <= (0 if fmt == 'PNG' else 40)
    assert shown[:3].mean() > 200 and shown[4:].mean() < 60
