"""Every sample-quality metric of the project, and `Scores`, which sample.py reports.

    FID, IS             Inception features through torch-fidelity (TF-Inception weights, as papers report),
                        with KID and precision / recall in the same features beside FID
    fashion_scores      Fashion-MNIST without any download: a Frechet distance in the features of a small
                        classifier trained once on the training split, and the share of samples per class

    FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

between Gaussians fitted to the features (mean mu, covariance S) of two image sets: the formula of
FID (Heusel et al. 2017), computed by torch-fidelity's own statistics functions, with the classifier's
128-d penultimate features in place of Inception's 2048-d ones. Inception's ImageNet features are a
poor fit for 28 x 28 gray clothes and need a download; this classifier needs neither, and its floor
(the FD between 10,000 training and 10,000 test images) is printed beside every score.

    python metrics.py          # train (or load) the cached classifier; print its accuracy, the floor,
                               # and the distance of blurred real images, for scale
    python metrics.py --samples runs/x/samples.npz   # score saved samples again (sample.py --format npz)
"""
import argparse
import hashlib
import json
import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
from tqdm import tqdm

import data
import models


# ----------------------------------------------------------------------------
# FID and Inception Score through torch-fidelity (TF-Inception weights, as the papers report).

def inception_weights(path=None):
    """Path of the Inception weights torch-fidelity uses: `path` if given, else torch hub's copy,
    downloaded there when absent. Offline, says which file to fetch and where to put it."""
    hub = Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(URL_INCEPTION_V3)
    how = f'download {URL_INCEPTION_V3} and put it at {hub}, or pass --inception-weights PATH to that file'
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Inception weights {path!r} do not exist: {how}')
        return str(path)
    if not hub.is_file():
        hub.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(hub))
        except urllib.error.URLError as e:
            raise RuntimeError(f'the Inception weights are not on this machine and cannot be downloaded ({e}): {how}') from e
    return str(hub)


class Images(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W), as torch-fidelity reads them."""

    def __init__(self, images):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f'expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}')
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


CIFAR10_TRAIN = 50_000             # images in the 'cifar10' reference (torch-fidelity's cifar10-train)


def _reference_files(folder):
    """The files torch-fidelity reads from a reference folder, by its own rule (not data.list_images): those
    directly in it with the extensions of its samples_find_ext."""
    folder, extensions = Path(folder), tuple('.' + e for e in DEFAULTS['samples_find_ext'].split(','))
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in extensions) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f'reference {str(folder)!r} is neither cifar10 nor a folder of '
                                f'{"/".join(extensions)} images (torch-fidelity reads only those, not subfolders)')
    return files


def reference_size(reference):
    """How many images a reference set (see reference_input) holds."""
    if torch.is_tensor(reference):
        return len(reference)
    return CIFAR10_TRAIN if reference == 'cifar10' else len(_reference_files(reference))


def reference_input(reference, image_size, slot=2):
    """torch-fidelity arguments for a reference set: 'cifar10' (its training set, as the paper),
    a folder of images (resized and centre-cropped to image_size; statistics cached under a name
    made from the folder, its file names and the size), or uint8 images (not cached)."""
    if torch.is_tensor(reference):
        return {f'input{slot}': Images(reference)}
    if reference == 'cifar10':
        if image_size != 32:
            raise ValueError(f'the cifar10 reference holds 32x32 images, the samples are {image_size}x{image_size}')
        return {f'input{slot}': 'cifar10-train'}
    folder, files = Path(reference), _reference_files(reference)     # the cache key lists the files read
    key = hashlib.sha1('\n'.join([str(folder.resolve()), str(image_size), *files]).encode()).hexdigest()[:12]
    name = re.sub(r'[^A-Za-z0-9_.-]', '_', f'folder-{folder.name}-{image_size}px-{key}')
    return {f'input{slot}': str(folder), f'input{slot}_cache_name': name, 'samples_resize_and_crop': image_size}


def _fidelity(**kwargs):
    """torch_fidelity.calculate_metrics with our defaults, results under short names."""
    kwargs = {'save_cpu_ram': True, 'verbose': False, **kwargs}
    try:
        m = torch_fidelity.calculate_metrics(**kwargs)
    except urllib.error.URLError as e:      # a registered data set that is absent and cannot be downloaded
        root = kwargs.get('datasets_root') or os.path.join(torch.hub.get_dir(), '..', 'fidelity_datasets')
        raise RuntimeError(f'the reference data set is not on this machine and cannot be downloaded ({e}); '
                           f'for CIFAR-10 put cifar-10-python.tar.gz into {os.path.normpath(root)} '
                           '(or pass --data-dir)') from e
    names = {'fid': torch_fidelity.KEY_METRIC_FID, 'is_mean': torch_fidelity.KEY_METRIC_ISC_MEAN,
             'is_std': torch_fidelity.KEY_METRIC_ISC_STD, 'kid_mean': KEY_METRIC_KID_MEAN, 'kid_std': KEY_METRIC_KID_STD,
             'precision': KEY_METRIC_PRECISION, 'recall': KEY_METRIC_RECALL}
    return {name: m[key] for name, key in names.items() if key in m}


INCEPTION = 'inception-v3-compat'   # torch-fidelity's TF-Inception: FID, IS, and here KID and precision / recall


def fidelity_metrics(images, reference=None, isc=False, device='cpu', kid=True, prc=True, **kwargs):
    """Scores of uint8 images (N, 3, H, W) in Inception features: against `reference` (see reference_input;
    None: none of these) the FID, KID (kid) and precision / recall (prc), and the Inception Score (isc=True).
    Returns {'fid', 'kid_mean', 'kid_std', 'precision', 'recall', 'is_mean', 'is_std'}, those computed.

    All through torch-fidelity's calculate_metrics with one feature extractor named for every metric: its
    default would compute precision / recall in VGG-16 features; named, they use the same 2048-d pool
    features as FID and KID, as in the classifier's features of fashion_scores. KID and precision / recall
    are the estimators of kid() and precision_recall() below (torch-fidelity's own: the cubic kernel, 100
    subsets of min(1000, N, N_reference) images; k = 3 neighbours, distances 1000 rows at a time).
    kwargs go to torch-fidelity: feature_extractor, feature_extractor_weights_path, batch_size,
    cache_root, datasets_root, isc_splits, verbose."""
    if isc and len(images) < kwargs.get('isc_splits', 10):
        raise ValueError(f"the Inception Score averages over {kwargs.get('isc_splits', 10)} splits: "
                         f'it needs at least that many samples, got {len(images)}')
    kid, prc = reference is not None and kid, reference is not None and prc
    if reference is not None:
        n_ref = reference_size(reference)
        need = PRC_K + 1 if prc else 2          # k neighbours besides the point itself; a pair for KID's U-statistic
        if min(len(images), n_ref) < need:
            raise ValueError(f"FID's companions {'precision / recall (k = 3)' if prc else 'KID'} need at least "
                             f'{need} images in each set, got {len(images)} samples and {n_ref} reference images')
        kwargs.update(reference_input(reference, images.shape[-1]))
        kwargs.update(kid_subset_size=min(1000, len(images), n_ref), prc_neighborhood=PRC_K, prc_batch_size=1000)
    kwargs.setdefault('feature_extractor', INCEPTION)
    return _fidelity(input1=Images(images), isc=isc, fid=reference is not None, kid=kid, prc=prc,
                     cuda=torch.device(device).type == 'cuda', **kwargs)


def cache_reference(reference, image_size, device='cpu', **kwargs):
    """Compute and cache the reference's features and statistics once, before sampling (so a missing
    data set fails early); returns the reference's own Inception Score."""
    kwargs.update(reference_input(reference, image_size, slot=1))
    kwargs.update(reference_input(reference, image_size, slot=2))
    return _fidelity(isc=True, fid=True, cuda=torch.device(device).type == 'cuda', **kwargs)['is_mean']


# ----------------------------------------------------------------------------
# What sample.py reports: set up before sampling (so that a missing data set or weight file fails
# before the work), computed on the samples after.

class Scores:
    """FID / IS (RGB models, --fid / --is) and, for Fashion-MNIST models, the classifier distance and
    class shares. `prepare()` returns what it learnt of the reference (its IS, the classifier's
    accuracy); calling the object on uint8 samples returns the scores; both as summary entries.
    One class for both families on purpose: it holds no metric, only what sample.py needs of either
    (every argument checked before sampling, the reference loaded before the work, one summary after);
    the Inception metrics live in `fidelity_metrics`, the Fashion-MNIST ones in `scores_against`."""

    def __init__(self, meta, n, fid=False, isc=False, reference=None, fashion=True, classifier=None,
                 data_dir=None, inception=None, fid_cache=None, batch_size=250, device='cpu'):
        self.meta, self.n, self.fid, self.isc, self.device = meta, n, fid, isc, device
        self.reference = reference or (meta.get('dataset') if meta.get('dataset') == 'cifar10' else None)
        self.fashion = fashion and meta.get('dataset') == 'fashion_mnist'
        self.classifier_path = classifier or DEFAULT_CLASSIFIER
        self.data_dir, self.inception, self.fid_cache, self.batch_size = data_dir, inception, fid_cache, batch_size
        if (fid or isc) and meta['channels'] != 3:
            raise ValueError(f"FID and IS need RGB images; this model makes {meta['channels']}-channel images")
        if fid and self.reference is None:
            raise ValueError('--fid needs --reference: cifar10 (the training set) or a folder of images')
        if fid and n < PRC_K + 1:
            raise ValueError(f'--fid also reports precision / recall (k = {PRC_K}): --n must be at least {PRC_K + 1}, '
                             f'got {n}')
        if isc and n < 10:
            raise ValueError(f'the Inception Score averages over 10 splits: --n must be at least 10, got {n}')
        if self.fashion:
            check_classifier(self.classifier_path)      # a mistyped --classifier stops before the sampling

    def prepare(self):
        out, self.fidelity_kwargs = {}, {}
        if self.fid or self.isc:
            self.fidelity_kwargs = dict(feature_extractor_weights_path=inception_weights(self.inception),
                                        cache_root=self.fid_cache, datasets_root=self.data_dir, verbose=True,
                                        device=self.device, batch_size=self.batch_size)
        if self.fid:
            out.update(reference=str(self.reference), reference_is=cache_reference(
                self.reference, self.meta['image_size'], **self.fidelity_kwargs))
            print(f"reference {self.reference}: statistics cached, its IS {out['reference_is']:.2f}")
        if self.fashion:      # the classifier (trained and cached on first use) and the real images
            data_dir = self.data_dir or 'data'
            self.net, accuracy, trained = get_classifier(self.classifier_path, data_dir)
            print(f'Fashion-MNIST classifier {self.classifier_path} ({"trained now" if trained else "cached"}): '
                  f'test accuracy {accuracy:.4f}')
            self.ref, source = self.fashion_reference(data_dir)
            print(f'Fashion-MNIST reference: {source}')
            out.update(classifier_test_accuracy=accuracy, reference=source)
            if self.n < 1000:
                print(f'note: a Frechet distance on {self.n} samples is biased upwards; compare runs at the same '
                      '--n (docs/fashion_mnist.md uses 10,000)')
        return out

    def fashion_reference(self, data_dir):
        """(reference_of the test images, where it came from): computed from the data set when its files
        are on disk; else the statistics stored in the classifier file; else the data set, downloaded."""
        stored = None
        if data.find_fashion_files(data_dir, train=False) is None:
            stored = stored_reference(self.classifier_path)
        if stored is not None:
            return stored, (f"the statistics of {stored['n']} test images stored in {self.classifier_path} "
                            f"(KID, precision / recall against {len(stored['features'])} of their features)")
        test = data.FashionMNIST(data_dir, train=False).images
        floor_train = data.FashionMNIST(data_dir, train=True).images[:len(test)]
        return reference_of(self.net, test, floor_train, progress=True), f'{len(test)} test images'

    def __call__(self, images):
        out = {}
        if self.fid or self.isc:
            out.update(fidelity_metrics(images, self.reference if self.fid else None, isc=self.isc,
                                        **self.fidelity_kwargs))
        if self.fashion:
            scores = scores_against(self.net, images, self.ref, progress=True)
            out.update(scores)
            print(f"FD {scores['fd']:.3f} against {self.ref['n']} test images (floor: {self.ref['n']} training "
                  f"images score {scores['fd_floor']:.3f}); class shares {scores['min_class_share']:.3f} "
                  f"to {scores['max_class_share']:.3f}: " + ' '.join(f'{v:.3f}' for v in scores['class_shares'].values()))
            if scores['precision'] is not None:
                print(f"KID {scores['kid_mean']:.5f} +- {scores['kid_std']:.5f}, precision {scores['precision']:.3f}, "
                      f"recall {scores['recall']:.3f} (k = {PRC_K})")
        return out


# ----------------------------------------------------------------------------
# Fashion-MNIST: a Frechet distance in a small classifier's features, and the class shares.

CLASSIFIER_FORMAT = 'rgm-fashion-classifier-v1'
# The classifier shipped in the repository (with the test set's statistics) when it is there, else a
# cache that `python metrics.py` or the first Fashion-MNIST score trains.
SHIPPED_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'checkpoints', 'fashion_classifier.pt')
DEFAULT_CLASSIFIER = SHIPPED_CLASSIFIER if os.path.isfile(SHIPPED_CLASSIFIER) else \
    os.path.join(torch.hub.get_dir(), 'checkpoints', 'rgm_fashion_classifier.pt')


class Classifier(nn.Module):
    """A small CNN on 32 x 32 one-channel images in [-1, 1]: three stages (a 3x3 conv with 32, 64, 128
    channels, batch norm, ReLU, 2x2 max pooling), global average pooling to the 128-d feature used by
    the Frechet distance, and a linear layer to the 10 class logits."""

    def __init__(self, widths=(32, 64, 128), num_classes=10):
        super().__init__()
        layers, c_in = [], 1
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x):
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def as_float(images):
    """uint8 (N, 1, H, W) in 0..255 -> float in [-1, 1]; float input is taken to be in [-1, 1] already."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def mean_pixel(images):
    """The mean pixel value of images (uint8, or float in [-1, 1]) on the 0..255 scale."""
    return float((as_float(images).double().mean() + 1) * 127.5)


@torch.no_grad()
def run_classifier(net, images, batch_size=500, progress=False, desc='features'):
    """(features (N, F) float64, predicted labels (N,)) of images (uint8 or float in [-1, 1])."""
    net.eval()
    device = next(net.parameters()).device
    feats, preds = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        f = net.features(as_float(images[i:i + batch_size]).to(device))
        feats.append(f.double().cpu())
        preds.append(net.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def frechet_distance(features_1, features_2):
    """FD between Gaussians fitted to two feature sets (N, F), through torch-fidelity's statistics."""
    if features_1.dim() != 2 or features_1.shape[1] != features_2.shape[1]:
        raise ValueError(f'feature sets of shapes {tuple(features_1.shape)} and {tuple(features_2.shape)} '
                         'are not (N, F) with the same F')
    if min(len(features_1), len(features_2)) < 2:
        raise ValueError('a Frechet distance needs at least 2 samples on each side (a covariance)')
    stats = [fid_features_to_statistics(f.detach().cpu().double()) for f in (features_1, features_2)]
    return fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]


def class_shares(labels, num_classes=10):
    """The share of samples given to each class (a list that sums to 1)."""
    return (torch.bincount(labels, minlength=num_classes).double() / len(labels)).tolist()


def train_classifier(train_set, test_set, epochs=5, batch_size=128, lr=2e-3, seed=0, progress=True):
    """Adam with a linear decay to 0 and random horizontal flips; returns (net, test accuracy)."""
    torch.manual_seed(seed)
    net = Classifier()
    x_train, y_train = train_set.tensors()
    batch_size = min(batch_size, len(x_train))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * (len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    with tqdm(total=steps, desc='classifier', disable=not progress) as bar:
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(x_train))
            for i in range(len(x_train) // batch_size):
                idx = order[i * batch_size:(i + 1) * batch_size]
                x, y = x_train[idx], y_train[idx]
                flip = torch.rand(len(x), 1, 1, 1) < 0.5
                loss = F.cross_entropy(net(torch.where(flip, x.flip(3), x)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f'{loss.item():.3f}')
    x_test, y_test = test_set.tensors()
    accuracy = (run_classifier(net, x_test)[1] == y_test).double().mean().item()
    return net.eval(), accuracy


def save_classifier(net, accuracy, path, reference=None):
    """Written atomically, as every checkpoint of the project (models.save_checkpoint). `reference`
    (reference_of of the test images) lets sample.py score without the data set on disk."""
    models.save_checkpoint(dict(format=CLASSIFIER_FORMAT, state=net.state_dict(), test_accuracy=accuracy,
                                reference=reference), path)


def stored_reference(path):
    """The test set's reference stored in a classifier file (features restored to float64), or None."""
    ref = torch.load(path, map_location='cpu', weights_only=True).get('reference')
    return None if ref is None else dict(ref, features=ref['features'].double())


def load_classifier(path):
    """(net, test accuracy) from a cached classifier file (weights_only); clear errors otherwise."""
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise RuntimeError(f'{path!r} is not a readable classifier file ({type(e).__name__}: {e}); delete it '
                           'to train a new one') from e
    if not isinstance(ckpt, dict) or ckpt.get('format') != CLASSIFIER_FORMAT:
        raise ValueError(f'{path!r} is not a Fashion-MNIST classifier of this project ({CLASSIFIER_FORMAT!r})')
    net = Classifier()
    net.load_state_dict(ckpt['state'])
    return net.eval(), ckpt['test_accuracy']


def check_classifier(path, train=None):
    """Refuse a --classifier that cannot be read or trained: a folder, or an absent file that is not to be
    trained. An absent file is trained there when `train`; by default (None) only the default cache
    DEFAULT_CLASSIFIER is, so that a mistyped path stops at once instead of training a new classifier."""
    if os.path.isfile(path):
        return
    if os.path.exists(path):
        raise ValueError(f'--classifier {path!r} is not a classifier file (a folder?): give the path of the file '
                         'to read, or to write the newly trained classifier to')
    if not (os.path.abspath(path) == os.path.abspath(DEFAULT_CLASSIFIER) if train is None else train):
        raise FileNotFoundError(f'--classifier {path!r} does not exist: give an existing classifier file, or '
                                f'train one there first with python metrics.py --classifier {path} --train-classifier')


def get_classifier(path=DEFAULT_CLASSIFIER, data_dir='data', progress=True, train=None, **train_kwargs):
    """The classifier at `path`; when the file is absent, trained on the training split and cached there
    (at the default cache, or anywhere with train=True: check_classifier). Returns (net, test accuracy,
    trained now?)."""
    check_classifier(path, train)
    if os.path.isfile(path):
        return (*load_classifier(path), False)
    net, accuracy = train_classifier(data.FashionMNIST(data_dir, train=True), data.FashionMNIST(data_dir, train=False),
                                     progress=progress, **train_kwargs)
    save_classifier(net, accuracy, path)
    return net, accuracy, True


def reference_of(net, reference, floor_train=None, n_features=None, progress=False):
    """What the scores need of the reference images, in the classifier's features: their Gaussian
    statistics (mu, sigma: the FD), the features themselves (KID, precision / recall; the first
    `n_features` of them, all when None) and the floor, the FD of `floor_train` real images against
    them (None without) and their mean pixel value (0..255). A dict of tensors, so a classifier file can
    store it."""
    f_ref, _ = run_classifier(net, reference, progress=progress, desc='reference features')
    stats = fid_features_to_statistics(f_ref)
    floor = None
    if floor_train is not None:
        floor = frechet_distance(run_classifier(net, floor_train, progress=progress, desc='floor features')[0], f_ref)
    return dict(mu=torch.as_tensor(stats['mu']), sigma=torch.as_tensor(stats['sigma']), n=len(reference),
                features=f_ref[:n_features], fd_floor=floor, mean_pixel=mean_pixel(reference))


def scores_against(net, samples, ref, progress=False):
    """FD of samples against a reference (reference_of), the class shares of the samples, KID
    (kid_mean, kid_std) and precision / recall (k = PRC_K) in the same features, and the floor when the
    reference has one. Precision and recall are None when a side has PRC_K images or fewer. The mean
    pixel value (0..255) of the samples, and of the reference where it was stored, shows a brightness
    drift that the feature-space scores mix with everything else."""
    f_gen, pred = run_classifier(net, samples, progress=progress, desc='sample features')
    if len(f_gen) < 2:
        raise ValueError('a Frechet distance needs at least 2 samples on each side (a covariance)')
    shares = class_shares(pred)
    stats = {key: v.numpy() for key, v in (('mu', ref['mu']), ('sigma', ref['sigma']))}
    out = dict(fd=fid_statistics_to_metric(fid_features_to_statistics(f_gen), stats, verbose=False)[KEY_METRIC_FID],
               n_samples=len(samples), n_reference=ref['n'], class_shares=dict(zip(data.FASHION_CLASSES, shares)),
               min_class_share=min(shares), max_class_share=max(shares), mean_pixel=mean_pixel(samples))
    if ref.get('mean_pixel') is not None:
        out['reference_mean_pixel'] = float(ref['mean_pixel'])
    f_ref = ref['features'].double()
    out['kid_mean'], out['kid_std'] = kid(f_gen, f_ref)
    enough = min(len(f_gen), len(f_ref)) > PRC_K
    out['precision'], out['recall'] = precision_recall(f_gen, f_ref) if enough else (None, None)
    if ref.get('fd_floor') is not None:
        out['fd_floor'] = ref['fd_floor']
    return out


def fashion_scores(net, samples, reference, floor_train=None, progress=False):
    """scores_against the reference images (all of their features), with the floor of `floor_train`."""
    return scores_against(net, samples, reference_of(net, reference, floor_train, progress=progress), progress)


# ---- beyond the Frechet distance: KID, precision and recall ----------------------------------------
# Both take feature tensors (N, F) of any width: this classifier's 128-d features or Inception's 2048-d.

PRC_K = 3                           # neighbourhood size of the precision / recall manifolds


def _check_feature_sets(named, min_n, what):
    """named: {argument name: tensor}; finite (N, F) sets with one F and at least min_n rows each, as
    float64 on the CPU, or a ValueError naming the argument."""
    for name, f in named.items():
        if not torch.is_tensor(f) or f.dim() != 2:
            shape = tuple(f.shape) if torch.is_tensor(f) else type(f).__name__
            raise ValueError(f'{name} must be a 2-D tensor (N, F), got {shape}')
        if len(f) < min_n:
            raise ValueError(f'{what} needs at least {min_n} samples in {name}, got {len(f)}')
        if not torch.isfinite(f).all():
            raise ValueError(f'{name} holds non-finite values')
    if len({f.shape[1] for f in named.values()}) > 1:
        raise ValueError('feature sets of shapes ' + ' and '.join(str(tuple(f.shape)) for f in named.values())
                         + ' do not have the same F')
    return [f.detach().cpu().double() for f in named.values()]


def kid(features_1, features_2, subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance (Binkowski et al. 2018), in whatever features are given: (mean, std).

    For m-subsets X = {x_i} of set 1 and Y = {y_j} of set 2 (drawn without replacement), the unbiased
    estimator of MMD^2 (Gretton et al. 2012, Lemma 6) with the cubic kernel k(x, y) = (x.y / F + 1)^3:

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2

    the within-set sums leave out i = j (the V-statistic, which keeps them, is biased upwards by
    2 (E k(x, x) - E k(x, x')) / m when both sets come from one distribution). Returned: the mean and
    the (population) standard deviation of MMD^2_u over `subsets` random pairs of subsets, through
    torch-fidelity's kid_features_to_metric with rng_seed=seed (the same seed, the same subsets).
    Rule for small sets: m = min(subset_size, N_1, N_2), at least 2; where m equals a set's size that
    set's subsets are all of it. The mean can be slightly negative; it is 0 in expectation for sets
    from one distribution. Libraries often print KID x 1000."""
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f'subsets must be a positive int, got {subsets!r}')
    if not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f'subset_size must be an int of at least 2, got {subset_size!r}')
    f1, f2 = _check_feature_sets(dict(features_1=features_1, features_2=features_2), 2, 'KID')
    m = min(subset_size, len(f1), len(f2))
    r = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=m, rng_seed=seed,
                               kid_kernel='poly', kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                               kid_kernel_poly_coef0=1, verbose=False)          # gamma None: 1 / F
    return r[KEY_METRIC_KID_MEAN], r[KEY_METRIC_KID_STD]


def precision_recall(features_gen, features_ref, k=PRC_K, batch_size=1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-2): (precision, recall).

    Each set stands for its manifold, the union of balls around its points, the ball of phi' having as
    radius the distance from phi' to its k-th nearest neighbour in its own set, phi' itself left out
    (the k+1-th smallest distance, the 0 to itself being the first). f(phi, Phi) = 1 if
    ||phi - phi'|| <= radius(phi') for some phi' in Phi. precision = mean over generated phi of
    f(phi, reference): how many samples look real; recall = mean over reference phi of f(phi, generated):
    how much of the real data the samples cover. Through torch-fidelity's prc_features_to_metric in its
    chunked mode: distances are computed batch_size rows at a time (batch_size x N doubles in memory)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f'k must be a positive int, got {k!r}')
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    f_gen, f_ref = _check_feature_sets(dict(features_gen=features_gen, features_ref=features_ref), k + 1,
                                       f'precision / recall with k = {k}')
    r = prc_features_to_metric(f_gen, f_ref, prc_neighborhood=k, prc_batch_size=batch_size, save_cpu_ram=True,
                               verbose=False)
    # shares of N_gen and N_ref points, which torch-fidelity averages in float32: the counts back, exactly
    return (round(r[KEY_METRIC_PRECISION] * len(f_gen)) / len(f_gen),
            round(r[KEY_METRIC_RECALL] * len(f_ref)) / len(f_ref))


def box_blur(images, size):
    """Images (uint8, or float in [-1, 1]) through a size x size box filter (mean over the pixels of the
    window inside the image), as float in [-1, 1]: real images made blurry, for scale."""
    return F.avg_pool2d(as_float(images), size, stride=1, padding=size // 2, count_include_pad=False)


def reference_scores(classifier=DEFAULT_CLASSIFIER, data_dir='data', n=10_000, progress=True, n_test=None):
    """What real images score, for scale: {'floor': n training images against the first n_test test
    images (default n), 'blur3', 'blur5': the same training images through a 3x3 / 5x5 box filter}, each
    as fashion_scores returns. With n_test = 10,000 and a small n, the floor is scored as sample.py scores
    n samples (against the whole test set): the floor of a table made at that n."""
    net, _, _ = get_classifier(classifier, data_dir, progress=progress)
    test = data.FashionMNIST(data_dir, train=False).images[:n_test or n]
    train = data.FashionMNIST(data_dir, train=True).images[:n]
    out = dict(floor=fashion_scores(net, train, test))
    for size in (3, 5):
        out[f'blur{size}'] = fashion_scores(net, box_blur(train, size), test)
    return out


def load_samples(path):
    """uint8 (N, 1, 32, 32) samples from sample.py's samples.npz (arr_0, (N, H, W, C)), or a clear error."""
    if not os.path.isfile(path):
        raise SystemExit(f'{path}: no such file (sample.py --format npz writes samples.npz)')
    try:
        with np.load(path) as f:
            arr = f['arr_0']
    except Exception as e:        # not a zip, no arr_0, truncated
        raise SystemExit(f'{path}: not a samples.npz of sample.py ({type(e).__name__}: {e})') from e
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (32, 32, 1) or len(arr) < 2:
        raise SystemExit(f'{path}: expected at least 2 uint8 Fashion-MNIST samples of shape (N, 32, 32, 1), '
                         f'got {arr.dtype} {arr.shape}')
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


FASHION_TEST_SIZE = 10_000


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--classifier', default=DEFAULT_CLASSIFIER, help='classifier file (the default is trained there '
                   'if absent; another path must exist, unless --train-classifier)')
    p.add_argument('--train-classifier', action='store_true', help='train the classifier into --classifier when '
                   'that file is absent')
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST files (see data.py)')
    p.add_argument('--n', type=int, default=10_000, help='real images on each side of the floor')
    p.add_argument('--samples', nargs='+', help='samples.npz files written by sample.py --format npz: print their '
                   'scores (FD, KID, precision / recall, class shares, mean pixel) as JSON instead')
    args = p.parse_args()
    if not 2 <= args.n <= FASHION_TEST_SIZE:         # the test split is the smaller side of the floor
        p.error(f'--n must lie in 2..{FASHION_TEST_SIZE:,} (the Fashion-MNIST test images), got {args.n}')
    train = args.train_classifier or None           # None: only the default cache is trained when absent
    if args.samples:
        sets = [load_samples(path) for path in args.samples]     # every file checked before any scoring
        net, _, _ = get_classifier(args.classifier, args.data_dir, train=train)
        on_disk = data.find_fashion_files(args.data_dir, train=False) is not None
        ref = (reference_of(net, data.FashionMNIST(args.data_dir, train=False).images) if on_disk
               else stored_reference(args.classifier))
        if ref is None:
            raise SystemExit(f'no test images in {args.data_dir} and no statistics stored in {args.classifier}')
        for path, images in zip(args.samples, sets):
            scores = scores_against(net, images, ref)
            print(json.dumps(dict(samples=path, **scores)))
        return
    net, accuracy, trained = get_classifier(args.classifier, args.data_dir, train=train)
    print(f'classifier {args.classifier} ({"trained now" if trained else "cached"}): test accuracy {accuracy:.4f}')
    scores = reference_scores(args.classifier, args.data_dir, args.n)
    print(f"floor: FD between {args.n} training and {args.n} test images = {scores['floor']['fd']:.3f}")
    for size in (3, 5):             # what blur costs: training images through a size x size box filter
        print(f"training images blurred by a {size}x{size} box filter: FD {scores[f'blur{size}']['fd']:.3f}")


if __name__ == '__main__':
    import cli
    cli.run_main(main)
