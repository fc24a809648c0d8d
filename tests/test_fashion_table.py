"""The Fashion-MNIST reproduction runner (bench/fashion_table.py) without training: its time estimate
from a run's own log, and a table row from metrics.json files, checked against numbers made here."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import fashion_table as ft  # noqa: E402


def test_estimate_uses_the_rows_own_log_and_its_latest_checkpoint(tmp_path):
    run = tmp_path / 'kld_d'
    (run / 'checkpoints').mkdir(parents=True)
    (run / 'checkpoints' / 'ckpt_00001000.pt').write_bytes(b'')
    # median of the logged rates: 16 images/s at batch 32 -> 2 s per step
    (run / 'log.jsonl').write_text('\n'.join(json.dumps(dict(step=s, img_per_s=r))
                                             for s, r in [(50, 8.0), (100, 16.0), (150, 64.0)]) + '\n')
    lines, seconds = ft.estimate(tmp_path, ['kld_d', 'mmse_d'], n=100, seeds={'kld_d': [0], 'mmse_d': [0]})
    train_kld = (4000 - 1000) * 2.0
    train_mmse = 4000 * ft.STEP_SECONDS['mmse']                  # no log yet: the measured estimate
    sampling = 100 * 4 * ft.SAMPLE_SECONDS_PER_NFE * 2
    assert seconds == pytest.approx(train_kld + train_mmse + sampling)
    assert 'step 1000 of 4000' in lines[0] and 'step 0 of 4000' in lines[1]


def test_a_row_summarises_its_seeds_and_its_rarest_class():
    shares = {'T-shirt/top': 0.1, 'Trouser': 0.2, 'Sneaker': 0.03, 'Bag': 0.67}
    runs = [dict(fd=fd, n=500, n_samples=500, sampling_seconds=2.0, class_shares=shares) for fd in (10.0, 12.0, 17.0)]
    row = ft.summarise('kld_d', runs)
    assert row['fd'] == pytest.approx(13.0) and row['fd_spread'] == pytest.approx(7.0)
    assert row['rarest'] == 'Sneaker 3.0%' and row['min_share'] == 0.03 and row['max_share'] == 0.67
    assert row['ms_per_image'] == pytest.approx(4.0) and row['nfe'] == 4
    assert row['images_seen'] == 4000 * 32
    assert ft.summarise('kld_d_k1', runs[:1])['nfe'] == 1 and ft.summarise('kld_d_k1', runs[:1])['fd_spread'] is None
