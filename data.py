"""Every data set of the project, as images in [-1, 1], and the one reader of image files.

    build_dataset       a training set by name: cifar10, celeba_hq / folder (image files), lsun_church,
                        fashion_mnist, fake
    load_images         the first n images of a data set's split, or image files, for plug-and-play
    list_images         the image files under a folder: one list of extensions, recursive, each file once
    open_image          one image file as an 8-bit PIL image

Fashion-MNIST comes from its four original IDX files, padded to 32 x 32. The files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...) are looked for, in
this order, in --data-dir, in --data-dir/FashionMNIST/raw (where torchvision downloads them) and
in /usr/share/datasets/fashion-mnist (Debian/Ubuntu: `apt-get install dataset-fashion-mnist`),
gzipped or not. When none is found and a download is allowed, torchvision fetches them into
--data-dir/FashionMNIST/raw.

IDX format (LeCun's MNIST page): a big-endian header, then the raw bytes. Images: magic 2051,
then the count, rows and columns as uint32, then count * rows * cols uint8 pixels in row-major
order. Labels: magic 2049, the count, then one uint8 per label.
"""
import gzip
import io
import os
import urllib.error

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision import transforms

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
    """(images path, labels path) of a split, or None when no folder holds either; a folder holding one
    of the two is an error (training on another folder's copy would go unnoticed)."""
    split = _SPLITS[train]
    for folder in (data_dir, os.path.join(data_dir, 'FashionMNIST', 'raw'), FASHION_SYSTEM_DIR):
        found = []
        for kind in ('images-idx3', 'labels-idx1'):
            names = [os.path.join(folder, f'{split}-{kind}-ubyte{ext}') for ext in ('', '.gz')]
            found.append(next((p for p in names if os.path.isfile(p)), None))
        if all(found):
            return tuple(found)
        if any(found):      # half a split: refuse rather than fall back to another folder's copy
            have, lack = (found[0], 'labels') if found[0] else (found[1], 'images')
            raise FileNotFoundError(f'{folder!r} holds {os.path.basename(have)} but not the {split} {lack} file '
                                    f'({split}-{lack}-idx{1 if lack == "labels" else 3}-ubyte[.gz]): add it, or '
                                    'give a --data-dir that holds both')
    return None


class FashionMNIST(torch.utils.data.Dataset):
    """A split of Fashion-MNIST held in memory as uint8 (N, 1, 32, 32): the 28 x 28 images padded
    by 2 pixels of background (0, black) on each side. Items are (image in [-1, 1], label)."""

    def __init__(self, data_dir='data', train=True, download=True):
        files = find_fashion_files(data_dir, train)
        if files is None and download:
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
        if images.shape[1:] != (28, 28):
            raise ValueError(f'{files[0]} holds {images.shape[1]}x{images.shape[2]} images; Fashion-MNIST\'s are 28x28')
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
# Image files: one list of extensions and one reader, for training folders and for pnp.py's inputs.

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')

GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')


def open_image(path, mode=None):
    """An image file as an 8-bit PIL image: mode 'RGB' or 'L', or None for 'L' when the file is gray
    (a palette of grays too) and 'RGB' otherwise (colour palette and alpha images are read as RGB, alpha
    dropped). 16-bit gray files (PIL modes I;16*, and I, which is how PIL opens 16-bit PNGs) are scaled
    by 255 / 65535, not clipped at 255. An EXIF orientation (a camera's rotated JPEG) is applied, so the image is upright
    as a viewer shows it. A file that cannot be decoded raises an OSError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)        # as a viewer shows it: a camera's EXIF orientation applied
            if im.mode == 'F':
                raise OSError('floating-point images are not supported: save it as 8- or 16-bit')
            if im.mode.startswith('I'):                            # 16-bit gray
                values = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.round(values * 255 / 65535), 0, 255).astype(np.uint8), 'L')
            gray = im.mode in GRAY_MODES or (im.mode == 'P' and palette_is_gray(im))
            if im.mode == 'P':
                im = im.convert('RGBA')                            # a palette, perhaps with transparency
            return im.convert(mode or ('L' if gray else 'RGB'))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise OSError(f'cannot read image {path}: {e}') from e


def palette_is_gray(im):
    """Whether a palette image shows only grays (R = G = B at every pixel): a gray image saved with a palette."""
    rgb = np.asarray(im.convert('RGBA'))[..., :3]
    return bool((rgb == rgb[..., :1]).all())


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


def list_images(root):
    """The image files under a folder and its subfolders (IMAGE_EXTENSIONS, any case), sorted. Folders
    reached through symbolic links are followed once: a link back to a folder already walked (a loop)
    and a second path to the same file are skipped, so every file counts once. A FIFO, socket or device
    with an image's name is refused (opening a FIFO waits for a writer: training would hang)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'{root!r} is not a folder of images')
    files, seen_dirs, seen_files = [], set(), set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            subfolders[:] = []
            continue
        seen_dirs.add(real)
        subfolders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.exists(path) and not os.path.isfile(path):
                raise OSError(f'{path} is not a regular file (a FIFO, socket or device?): reading it could wait '
                              'forever; move it out of the folder')
            if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                files.append(path)
    return sorted(files)


def to_model(im):
    """8-bit PIL image (L or RGB) -> (C, H, W) in [-1, 1]."""
    im = im.convert('L' if im.mode in GRAY_MODES else 'RGB')
    return torchvision.transforms.functional.pil_to_tensor(im).float() / 127.5 - 1


# ----------------------------------------------------------------------------
# Training sets: images in [-1, 1] (the random horizontal flip happens on the device, in the trainer).

DATASETS = ('cifar10', 'celeba_hq', 'lsun_church', 'folder', 'fake', 'fashion_mnist')


def channels_of(name):
    """Image channels of a training set: 1 for Fashion-MNIST, 3 (RGB) for every other."""
    return 1 if name == 'fashion_mnist' else 3


class ImageFiles(torch.utils.data.Dataset):
    """Every image under a folder (list_images), as (image, 0) like torchvision's data sets. A file that
    cannot be decoded stops the run naming it (the trainer can check them all first: --check-images)."""

    def __init__(self, root, transform):
        if not os.path.isdir(root):
            raise FileNotFoundError(f'--data-dir {root!r} does not exist: give the folder of training images')
        self.files = list_images(root)
        if not self.files:
            raise FileNotFoundError(f'--data-dir {root!r} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.transform(open_image(self.files[i], 'RGB')), 0


_LMDB_ENVS = {}      # (process id, path) -> an open read-only handle: lmdb allows one per database and process


def lmdb_env(path):
    """The read-only handle of an LMDB database in this process (opened once per process: a data-loading
    process forked from the trainer opens its own)."""
    key = (os.getpid(), os.path.realpath(path))
    if key not in _LMDB_ENVS:
        try:
            import lmdb
        except ModuleNotFoundError:
            raise ModuleNotFoundError('LSUN is read with the lmdb package: pip install lmdb '
                                      '(it is in requirements.txt)') from None
        try:
            _LMDB_ENVS[key] = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
        except lmdb.Error as e:
            raise FileNotFoundError(f'{path!r} is not a readable LMDB database ({e})') from None
    return _LMDB_ENVS[key]


class LMDBImages(torch.utils.data.Dataset):
    """The first `limit` images of an LMDB database in LSUN's format (each value an encoded image, WebP
    for LSUN; the keys in the database's own sorted order, as torchvision's LSUN reader takes them), as
    (image, 0). Read with the lmdb package, read-only; nothing is written anywhere (torchvision's reader
    keeps its key list in a `_cache_*` file in the working folder, and reuses it for any database whose
    path has the same letters)."""

    def __init__(self, path, transform, limit=None):
        self.path, self.transform = path, transform
        with lmdb_env(path).begin(write=False) as txn:
            keys = txn.cursor().iternext(keys=True, values=False)
            self.keys = [key for key, _ in zip(keys, range(limit))] if limit else list(keys)
        if not self.keys:
            raise FileNotFoundError(f'{path!r} is an LMDB database without images')

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        with lmdb_env(self.path).begin(write=False) as txn:
            buf = txn.get(self.keys[i])
        try:
            image = open_image(io.BytesIO(buf), 'RGB')
        except OSError as e:
            raise OSError(f'{self.path}: cannot decode the image under key {self.keys[i]!r} ({e.__cause__})') from e
        return self.transform(image), 0


def cifar10(data_dir, train=True, transform=None, download=True):
    """torchvision's CIFAR-10 split, downloaded into data_dir when absent; offline, says what to fetch."""
    try:
        return torchvision.datasets.CIFAR10(data_dir, train=train, transform=transform, download=download)
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f'CIFAR-10 is not in --data-dir {data_dir!r} and cannot be downloaded ({e}): put '
                           f'cifar-10-python.tar.gz (from https://www.cs.toronto.edu/~kriz/) into {data_dir!r} '
                           'and run again') from e


def build_dataset(name, data_dir, image_size, fake_size=64, download=True):
    """The training set; resize and center crop to image_size (a no-op for CIFAR-10 at 32).
    Fashion-MNIST is one-channel and padded to 32 x 32."""
    if name == 'fashion_mnist':
        if image_size != 32:
            raise ValueError(f'fashion_mnist is 32 x 32 (28 x 28 padded), not --image-size {image_size}')
        return FashionMNIST(data_dir, train=True, download=download)
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    if name == 'cifar10':
        return cifar10(data_dir, train=True, transform=tf, download=download)
    if name in ('celeba_hq', 'folder'):
        return ImageFiles(data_dir, tf)
    if name == 'lsun_church':
        path = os.path.join(data_dir, 'church_outdoor_train_lmdb')
        if not os.path.isdir(path):
            raise FileNotFoundError(f'--data-dir {data_dir!r} has no church_outdoor_train_lmdb folder (LSUN)')
        return LMDBImages(path, tf, limit=120_000)          # the authors' first 120k
    if name == 'fake':
        return torchvision.datasets.FakeData(fake_size, (3, image_size, image_size), num_classes=1, transform=tf)
    raise ValueError(f'unknown data set {name!r}: choose one of {DATASETS}')


# ----------------------------------------------------------------------------
# Images to restore (pnp.py): a split of a data set, or image files.

def load_images(dataset=None, data_dir='data', split='test', n=None, files=None):
    """[(name, image (C, H, W) in [-1, 1])]: the first n images of `dataset`'s split ('cifar10',
    'fashion_mnist', downloaded into data_dir when absent), or the given image files. Results are
    named by the file stem, so two files with one stem are refused."""
    train = split == 'train'
    if dataset == 'cifar10':
        images = cifar10(data_dir, train=train)
        return [(f'cifar10_{split}_{i:05d}', to_model(images[i][0])) for i in range(min(n or len(images), len(images)))]
    if dataset == 'fashion_mnist':     # padded to 32 x 32 as in training
        images = FashionMNIST(data_dir, train=train, download=True).tensors(n)[0]
        return [(f'fashion_mnist_{split}_{i:05d}', image) for i, image in enumerate(images)]
    if dataset is not None:
        raise ValueError(f'unknown data set {dataset!r} for restoration: cifar10 or fashion_mnist')
    stems = [os.path.splitext(os.path.basename(path))[0] for path in files]
    clash = sorted({str(p) for p, stem in zip(files, stems) if stems.count(stem) > 1})
    if clash:       # results are named by the stem: two inputs x.png would write one restored/x.png
        raise ValueError(f'inputs with the same file name would overwrite each other\'s results: {", ".join(clash)}')
    return [(stem, to_model(open_image(path))) for stem, path in zip(stems, files)]
