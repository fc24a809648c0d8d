"""Sample quality on Fashion-MNIST without any download: a Frechet distance in the features of a small
classifier trained once on the training split, and the share of samples in each class.

    FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})

between Gaussians fitted to the features (mean mu, covariance S) of two image sets: the formula of
FID (Heusel et al. 2017), computed by torch-fidelity's own statistics functions, with the classifier's
128-d penultimate features in place of Inception's 2048-d ones. Inception's ImageNet features are a
poor fit for 28 x 28 gray clothes and need a download; this classifier needs neither, and its floor
(the FD between 10,000 training and 10,000 test images) is printed beside every score.

    python metrics.py          # train (or load) the cached classifier; print its accuracy, the floor,
                               # and the distance of blurred real images, for scale
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from tqdm import tqdm

import data
import models

CLASSIFIER_FORMAT = 'rgm-fashion-classifier-v1'
DEFAULT_CLASSIFIER = os.path.join(torch.hub.get_dir(), 'checkpoints', 'rgm_fashion_classifier.pt')


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


def save_classifier(net, accuracy, path):
    """Written atomically, as every checkpoint of the project (models.save_checkpoint)."""
    models.save_checkpoint(dict(format=CLASSIFIER_FORMAT, state=net.state_dict(), test_accuracy=accuracy), path)


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


def get_classifier(path=DEFAULT_CLASSIFIER, data_dir='data', progress=True, **train_kwargs):
    """The cached classifier at `path`, trained on the training split (and cached) on first use.
    Returns (net, test accuracy, trained now?)."""
    if os.path.isfile(path):
        return (*load_classifier(path), False)
    net, accuracy = train_classifier(data.FashionMNIST(data_dir, train=True), data.FashionMNIST(data_dir, train=False),
                                     progress=progress, **train_kwargs)
    save_classifier(net, accuracy, path)
    return net, accuracy, True


def fashion_scores(net, samples, reference, floor_train=None, progress=False):
    """FD of samples against the reference images, class shares of the samples, and the floor (the FD
    of `floor_train` real images against the same reference) when given."""
    f_ref, _ = run_classifier(net, reference, progress=progress, desc='reference features')
    f_gen, pred = run_classifier(net, samples, progress=progress, desc='sample features')
    shares = class_shares(pred)
    out = dict(fd=frechet_distance(f_gen, f_ref), n_samples=len(samples), n_reference=len(reference),
               class_shares=dict(zip(data.FASHION_CLASSES, shares)), min_class_share=min(shares),
               max_class_share=max(shares))
    if floor_train is not None:
        out['fd_floor'] = frechet_distance(run_classifier(net, floor_train, progress=progress,
                                                          desc='floor features')[0], f_ref)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--classifier', default=DEFAULT_CLASSIFIER, help='cached classifier (trained there if absent)')
    p.add_argument('--data-dir', default='data', help='Fashion-MNIST files (see data.py)')
    p.add_argument('--n', type=int, default=10_000, help='real images on each side of the floor')
    args = p.parse_args()
    if args.n < 2:
        p.error(f'--n must be at least 2, got {args.n}')
    net, accuracy, trained = get_classifier(args.classifier, args.data_dir)
    print(f'classifier {args.classifier} ({"trained now" if trained else "cached"}): test accuracy {accuracy:.4f}')
    test = data.FashionMNIST(args.data_dir, train=False).images[:args.n]
    train = data.FashionMNIST(args.data_dir, train=True).images[:args.n]
    f_test = run_classifier(net, test)[0]
    floor = frechet_distance(run_classifier(net, train)[0], f_test)
    print(f'floor: FD between {args.n} training and {args.n} test images = {floor:.3f}')
    for size in (3, 5):             # what blur costs: training images through a size x size box filter
        blurred = F.avg_pool2d(as_float(train), size, stride=1, padding=size // 2, count_include_pad=False)
        print(f'training images blurred by a {size}x{size} box filter: FD {frechet_distance(run_classifier(net, blurred)[0], f_test):.3f}')


if __name__ == '__main__':
    main()
