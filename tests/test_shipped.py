"""The trained weights in checkpoints/, end to end, without the data set and without the network:
sample 1,000 images of each shipped RGM generator (seed 0; the DDPM: 500 images, DDIM 10 steps) and score
them with the shipped classifier against the test set's statistics stored in it. The bounds are the
values measured at the commit that shipped the weights (docs/fashion_mnist.md) with a margin: a broken
sampler, loader or export fails, and so does a model that loses the paper's claim (MAP restoration with a
learned prior beats the MMSE restorer).

Measured, the claim holds with room for RGM-KLD-D and RGM-DSWD-D (FD 0.30 and 0.33 of MMSE's) and only
just for RGM-KLD-SR: 0.506 of MMSE's on these 1,000 samples, 0.499 on 10,000. So KLD-D and DSWD-D are held
below half of MMSE's FD and KLD-SR below 0.6 of it: the target of half is missed by KLD-SR at n = 1,000
by 1%, and a bound that close to the measured value would pin the seed, not the model."""
import functools
import json
from pathlib import Path

import pytest
import torch

import metrics
import models
import sample
from schedules import schedule_of

CHECKPOINTS = Path(__file__).resolve().parents[1] / 'checkpoints'
N = 1000
# preset: (the FD measured on these samples when the weights were shipped, DDIM steps or None, samples);
# 2-core CPU VM, torch 2.14.1. The bound is 1.25 x the measured value.
MEASURED = {
    'fashion_kld_d':  (11.27, None, N),    # rarest class 0.6%, KID 0.755, precision 0.644, recall 0.097
    'fashion_kld_d_4x': (2.04, None, N),   # 16,000 steps: rarest class 7.3%, KID 0.050, precision 0.730,
                                           # recall 0.498
    'fashion_kld_sr': (18.86, None, N),    # rarest class 0.3%, KID 1.735, precision 0.590, recall 0.042
    'fashion_dswd_d': (12.30, None, N),    # rarest class 2.0%, KID 0.852, precision 0.693, recall 0.142
    'fashion_mmse_d': (37.28, None, N),    # rarest class 0.0%, KID 4.057, precision 0.329, recall 0.001
    'fashion_ddpm':   (36.62, 10, 500),    # x0 clamped (sample.py's default): rarest class 1.8%, KID 4.117,
                                           # precision 0.264, recall 0.302 (unclamped: FD 38.93, KID 3.397)
    'fashion_ddpm_4x': (13.81, 10, 500),   # 16,000 steps, x0 clamped: rarest class 3.2%, KID 1.767,
                                           # precision 0.582, recall 0.428
}
# RGM's FD at most this fraction of the MMSE restorer's (measured: 0.302, 0.506 and 0.330)
OF_MMSE = {'fashion_kld_d': 0.5, 'fashion_kld_sr': 0.6, 'fashion_dswd_d': 0.5}
SHIPPED = sorted(p for p in MEASURED if (CHECKPOINTS / f'{p}.pt').is_file())


@functools.lru_cache(maxsize=None)
def shipped_scores(preset):
    torch.set_num_threads(2)
    _, steps, n = MEASURED[preset]
    G, meta = models.load_generator(CHECKPOINTS / f'{preset}.pt')
    assert meta['dataset'] == 'fashion_mnist' and meta['channels'] == 1
    images = sample.generate(G, schedule_of(meta), meta, n, batch_size=500, seed=0, steps=steps)
    net, accuracy = metrics.load_classifier(CHECKPOINTS / 'fashion_classifier.pt')
    assert accuracy > 0.85
    return metrics.scores_against(net, images, metrics.stored_reference(CHECKPOINTS / 'fashion_classifier.pt'))


@pytest.mark.parametrize('preset', SHIPPED)
def test_shipped_generator_scores_within_its_bound(preset):
    scores = shipped_scores(preset)
    shown = json.dumps({k: scores[k] for k in ('fd', 'kid_mean', 'min_class_share')})
    assert scores['fd'] < 1.25 * MEASURED[preset][0], shown
    if preset != 'fashion_mmse_d':                  # the MMSE restorer does lose classes (measured: 0.0%)
        assert scores['min_class_share'] > 0.002, shown


@pytest.mark.parametrize('preset', sorted(OF_MMSE))
def test_rgm_beats_the_mmse_restorer(preset):
    if not {preset, 'fashion_mmse_d'} <= set(SHIPPED):
        pytest.skip(f'{preset} or fashion_mmse_d is not shipped')
    assert shipped_scores(preset)['fd'] < OF_MMSE[preset] * shipped_scores('fashion_mmse_d')['fd']


def test_training_4x_longer_pays():
    """The 16,000-step RGM-KLD-D against the 4,000-step one of the same preset (measured FD 2.04 against
    11.27): FD below half, and every class at 5% of the samples or more (measured 7.3%; 0.6% at 4,000)."""
    if not {'fashion_kld_d', 'fashion_kld_d_4x'} <= set(SHIPPED):
        pytest.skip('fashion_kld_d or fashion_kld_d_4x is not shipped')
    long, short = shipped_scores('fashion_kld_d_4x'), shipped_scores('fashion_kld_d')
    assert long['fd'] < 0.5 * short['fd'] and long['min_class_share'] >= 0.05, (long['fd'], short['fd'])
