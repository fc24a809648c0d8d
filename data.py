"""Fashion-MNIST from its four original IDX files, padded to 32 x 32 and scaled to [-1, 1].

The files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...) are looked for, in
this order, in --data-dir, in --data-dir/FashionMNIST/raw (where torchvision downloads them) and
in /usr/share/datasets/fashion-mnist (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`),
gzipped or not. When none is found and a download is allowed, torchvision fetches them into
--data-dir/FashionMNIST/raw.

IDX format (LeCun's MNIST page): a big-endian header, then the raw bytes. Images: magic 2051,
then the count, rows and columns as uint32, then count * rows * cols uint8 pixels in row-major
order. Labels: magic 2049, the count, then one uint8 per label.
"""
import gzip
import os

import numpy as np
import torch

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
