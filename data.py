"""Fashion-MNIST from its four original IDX files, padded to 32 x 32 and scaled to [-1, 1].

The files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...) are looked for, in
this order, in --data-dir, in --data-dir/FashionMNIST/raw (where torchvision downloads them) and
in /usr/share/datasets/fashion-mnist (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`),
gzipped or not. When none is found and a download is allowed, torchvision fetches them into
--data-dir/FashionMNIST/raw.

IDX format (LeCun's MNIST page): a big-endian header, then the raw bytes. Images: magic 2051,
then the count, rows and columns as uint32, then count * rows * cols uint8 pixels in row-major
order. Labels: magic 2049, the count, then one uint8 per label.

Also the file handling every script shares: images read from disk in 8 bits (16-bit PNGs scaled, not
clipped), the one rule for an output folder (`prepare_out`), JSON that standard parsers read, and the
argparse types that refuse zero and negative counts before any work.
"""
import argparse
import glob
import gzip
import json
import math
import os
import shutil

import numpy as np
import torch
from PIL import Image

FASHION_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                   'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_SPLITS = {True: 'train', False: 't10k'}
_MAGIC = {2051: 'images', 2049: 'labels'}


def read_idx(path):
    """An IDX file (gzipped if its name ends in .gz) -> uint8 array of shape (N,) or (N, rows, cols)."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f'{path!r} cannot be read as an IDX file ({type(e).__name__}: {e})') from e
    if len(raw) < 8:
        raise ValueError(f'{path!r} is too short for an IDX header ({len(raw)} bytes)')
    magic, n = (int(v) for v in np.frombuffer(raw[:8], '>u4'))
    if magic not in _MAGIC:
        raise ValueError(f'{path!r} is not an IDX file of images or labels (magic number {magic})')
    header = 16 if magic == 2051 else 8
    shape = (n,) + tuple(int(v) for v in np.frombuffer(raw[8:header], '>u4'))
    if len(raw) != header + int(np.prod(shape)):
        raise ValueError(f'{path!r}: the header announces {shape} but the file holds '
                         f'{len(raw) - header} bytes of data (cut short?)')
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def find_fashion_files(data_dir, train):
    """(images path, labels path) of a split, or None when no folder holds both."""
    split = _SPLITS[train]
    for folder in (data_dir, os.path.join(data_dir, 'FashionMNIST', 'raw'), FASHION_SYSTEM_DIR):
        found = []
        for kind in ('images-idx3', 'labels-idx1'):
            names = [os.path.join(folder, f'{split}-{kind}-ubyte{ext}') for ext in ('', '.gz')]
            found.append(next((p for p in names if os.path.isfile(p)), None))
        if all(found):
            return tuple(found)
    return None


class FashionMNIST(torch.utils.data.Dataset):
    """A split of Fashion-MNIST held in memory as uint8 (N, 1, 32, 32): the 28 x 28 images padded
    by 2 pixels of background (0, black) on each side. Items are (image in [-1, 1], label)."""

    def __init__(self, data_dir='data', train=True, download=True):
        files = find_fashion_files(data_dir, train)
        if files is None and download:
            import torchvision
            torchvision.datasets.FashionMNIST(data_dir, train=train, download=True)
            files = find_fashion_files(data_dir, train)
        if files is None:
            split = _SPLITS[train]
            raise FileNotFoundError(
                f'Fashion-MNIST {split} files not found in {data_dir!r}, {data_dir!r}/FashionMNIST/raw or '
                f'{FASHION_SYSTEM_DIR}: install them with `apt-get install dataset-fashion-mnist`, put '
                f'{split}-images-idx3-ubyte.gz and {split}-labels-idx1-ubyte.gz in --data-dir, or allow '
                'the download (internet)')
        images, labels = (read_idx(p) for p in files)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f'{files[0]} and {files[1]} do not hold matching images and labels '
                             f'(shapes {images.shape} and {labels.shape})')
        self.files = files
        self.images = torch.nn.functional.pad(torch.from_numpy(images.copy()), (2, 2, 2, 2)).unsqueeze(1)
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1, int(self.targets[i])

    def tensors(self, n=None):
        """The first n images in [-1, 1] as one float tensor, and their labels."""
        n = len(self) if n is None else n
        return self.images[:n].float() / 127.5 - 1, self.targets[:n]


# ----------------------------------------------------------------------------
# Image files: one reader for training folders and for pnp.py's inputs.

GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')


def open_image(path, mode=None):
    """An image file as an 8-bit PIL image: mode 'RGB' or 'L', or None for 'L' when the file is gray
    and 'RGB' otherwise (palette and alpha images are read as RGB, alpha dropped). 16-bit gray files
    (PIL modes I;16*, and I, which is how PIL opens 16-bit PNGs) are scaled by 255 / 65535, not
    clipped at 255. A file that cannot be decoded raises an OSError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == 'F':
                raise OSError('floating-point images are not supported: save it as 8- or 16-bit')
            if im.mode.startswith('I'):                            # 16-bit gray
                values = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.round(values * 255 / 65535), 0, 255).astype(np.uint8), 'L')
            target = mode or ('L' if im.mode in GRAY_MODES else 'RGB')
            if im.mode == 'P' and target == 'RGB':
                im = im.convert('RGBA')                            # a palette with transparency
            return im.convert(target)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f'cannot read image {path}: {e}') from e


def check_images(files, progress=True):
    """Decode every file; returns [(path, reason)] of those that fail."""
    from tqdm import tqdm
    bad = []
    for path in tqdm(files, desc='checking images', unit='img', disable=not progress):
        try:
            open_image(path)
        except OSError as e:
            bad.append((path, str(e.__cause__ or e)))
    return bad


# ----------------------------------------------------------------------------
# Output folders and files.

def prepare_out(out, owned, overwrite, what='output', remove=True):
    """The rule for every script's --out: a missing or empty folder is used as is. A folder that already
    holds files is refused (before any work, nothing written) unless `overwrite`; then the entries this
    script writes (`owned`: names or glob patterns) are removed, so no file of the earlier run is left
    beside the new ones; files the script does not write are kept. Call after the arguments are checked."""
    if not os.path.isdir(out):
        if os.path.exists(out):
            raise NotADirectoryError(f'--out {out!r} is a file, not a folder')
        return
    if not os.listdir(out):
        return
    if not overwrite:
        raise FileExistsError(f'--out {out!r} already holds files (an earlier {what}?): pass --overwrite to '
                              'replace that run\'s outputs, or choose another --out')
    for pattern in owned if remove else ():
        for path in glob.glob(os.path.join(glob.escape(out), pattern)):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def finite_or_none(obj):
    """obj with every non-finite float (a PSNR of identical images, a NaN) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(path, obj):
    """JSON that standard parsers read: non-finite floats become null (never NaN or Infinity)."""
    with open(path, 'w') as f:
        json.dump(finite_or_none(obj), f, indent=2, allow_nan=False)
        f.write('\n')


# ----------------------------------------------------------------------------
# argparse types: counts and scales that cannot be zero or negative fail at parsing.

def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return value


def nonnegative_float(text):
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value
