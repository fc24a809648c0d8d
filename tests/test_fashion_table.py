"""The Fashion-MNIST reproduction runner (bench/fashion_table.py) without training: its time estimate
from a run's own log, and a table row from metrics.json files, checked against numbers made here."""
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module
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


def test_the_diffusion_rows_are_sampled_at_every_sampler_and_the_rgm_points_beside_them():
    seeds = {'kld_d': [0, 1, 2], 'ddpm': [0], 'mmse_d': [0]}
    ddpm = ft.evaluations('ddpm', 10_000, 500, seeds, diffusion=True)
    assert [nfe for _, _, _, nfe in ddpm] == list(ft.SAMPLERS) and {m for m, *_ in ddpm} == {500}
    assert ft.evaluations('kld_d', 10_000, 500, seeds, diffusion=True) == \
        [(10_000, 0, None, 4), (500, 0, None, 4), (10_000, 1, None, 4), (10_000, 2, None, 4)]
    assert ft.evaluations('kld_d', 10_000, 500, seeds, diffusion=False) == \
        [(10_000, s, None, 4) for s in (0, 1, 2)]
    assert ft.evaluations('mmse_d', 10_000, 500, seeds, diffusion=True) == [(10_000, 0, None, 4)]
    assert ft.eval_dir(Path('r'), 'ddpm', 500, 0, 25).name == 'eval_n500_seed0_ddim25'
    assert ft.eval_dir(Path('r'), 'ddpm', 500, 0, 1000).name == 'eval_n500_seed0_ddpm1000'


def test_shipped_weights_stand_in_for_a_run_only_when_asked(tmp_path):
    shipped = ft.ROOT / 'checkpoints' / 'fashion_kld_d.pt'
    assert shipped.is_file()
    assert ft.weights(tmp_path, 'kld_d') is None
    assert ft.weights(tmp_path, 'kld_d', shipped=True) == shipped
    assert ft.weights(tmp_path, 'kld_d_k1', shipped=True) is None        # an ablation ships nothing
    final = tmp_path / 'kld_d' / 'checkpoints' / 'ckpt_00004000.pt'
    final.parent.mkdir(parents=True)
    final.write_bytes(b'')
    assert ft.weights(tmp_path, 'kld_d', shipped=True) == final          # the run's own checkpoint first


def scored(fd, nfe, ms, kid=0.01, recall=0.25):
    shares = {'Bag': 0.5, 'Trouser': 0.5}
    return dict(fd=fd, kid_mean=kid, precision=0.5, recall=recall, mean_pixel=60.0, n=100, n_samples=100, nfe=nfe,
                sampling_seconds=ms * 100 / 1e3, class_shares=shares, threads=1)


def test_the_nfe_table_finds_the_fewest_ddim_steps_that_reach_rgm(tmp_path):
    points = [ft.Point('kld_d', ft.Sampling(100, 0, None, 4), scored(5.0, 4, 10.0))]
    fds = {4: 40.0, 7: 20.0, 10: 6.0, 25: 4.5, 50: 3.0, 100: 2.5, 1000: 2.0}
    points += [ft.Point('ddpm', ft.Sampling(100, 0, s, s), scored(fds[s], s, 2.5 * s, recall=s / 100))
               for s in ft.SAMPLERS]
    points += [ft.Point('ddpm_4x', ft.Sampling(100, 0, s, s), scored(fds[s] + 10, s, 2.5 * s)) for s in ft.SAMPLERS]
    floor = {k: v for k, v in scored(0.5, None, 0.0).items() if k not in ('nfe', 'sampling_seconds')}
    for p in points:                    # the samples each point was scored on, for nfe_samples.png
        ft.eval_dir(tmp_path, p.row, 100, 0, p.sampling.sampler).mkdir(parents=True)
        np.savez(ft.eval_dir(tmp_path, p.row, 100, 0, p.sampling.sampler) / 'samples.npz',
                 np.zeros((20, 32, 32, 1), np.uint8))
    ft.write_nfe_table(tmp_path, points, 100, {}, floor)
    written = json.loads((tmp_path / 'nfe.json').read_text())
    answers = {a['row']: a for a in written['answers']}
    # the floor heads the table at the same n and is never taken for a model's point
    assert written['rows'][0]['row'] == 'floor' and written['rows'][0]['fd'] == 0.5
    assert (tmp_path / 'nfe_table.md').read_text().splitlines()[2].startswith('| 100 training images (the floor')
    # 25 steps is the first with FD <= 5: 25 / 4 the NFE, 62.5 ms against 10 ms the time
    assert answers['ddpm']['reached'] == 25 and answers['ddpm']['nfe_ratio'] == pytest.approx(6.25)
    assert answers['ddpm']['time_ratio'] == pytest.approx(6.25)
    # recall s / 100 reaches RGM's 0.25 first at 25 steps; the ancestral sampler is not a DDIM step count
    assert answers['ddpm']['recall_reached_at'] == 25 and answers['ddpm']['best_precision'] == 0.5
    # +10 everywhere: never reached; the best is the ancestral sampler's 12.0 at 1000
    assert answers['ddpm_4x']['reached'] is None and answers['ddpm_4x']['best_fd'] == pytest.approx(12.0)
    assert answers['ddpm_4x']['best_nfe'] == 1000
    # ... and the DDIM line names DDIM's own best: 12.5 at 100 steps
    assert answers['ddpm_4x']['best_ddim_fd'] == pytest.approx(12.5) and answers['ddpm_4x']['best_ddim_nfe'] == 100
    assert 'its best is FD 12.50 at 100 steps.' in (tmp_path / 'nfe_table.md').read_text()
    assert (tmp_path / 'nfe.png').is_file() and 'not reach' in (tmp_path / 'nfe_table.md').read_text()
    assert (tmp_path / 'nfe_samples.png').is_file()
    # the ancestral sampler against RGM: FD 2.0 reaches 5.0 at 250x the NFE and 2500 / 10 ms the time
    assert answers['ddpm']['ancestral_fd'] == 2.0 and answers['ddpm']['ancestral_time_ratio'] == pytest.approx(250)
    text = (tmp_path / 'nfe_table.md').read_text()
    assert 'levels reaches it (FD 2.00, 250x the NFE)' in text and 'levels does not reach it (FD 12.00' in text
    assert text.rstrip().endswith('1 CPU thread per sampling process.')     # as sample.py recorded them


def test_a_time_ratio_only_between_points_sampled_on_the_same_threads():
    rgm, ddim = dict(ms_per_image=16.0, threads=2), dict(ms_per_image=120.0, threads=2)
    ratio, sentence = ft.time_against(ddim, rgm)
    assert ratio == pytest.approx(7.5) and '1200 s against 160 s (7.5x)' in sentence
    ratio, sentence = ft.time_against(dict(ddim, threads=1), rgm)      # 1 thread against 2: not comparable
    assert ratio is None and 'sampled on 1 and 2 threads' in sentence


def test_every_metric_is_averaged_over_the_seeds_with_its_spread():
    runs = [scored(fd, 4, 4.0, kid) for fd, kid in ((10.0, 0.02), (12.0, 0.01), (17.0, 0.03))]
    row = ft.summarise('kld_d', runs, minutes=41.0)
    assert row['kid_mean'] == pytest.approx(0.02) and row['kid_mean_spread'] == pytest.approx(0.02)
    assert row['precision_spread'] == 0 and row['train_minutes'] == 41.0
    line = ft.table_line(row)
    assert '13.00 (10.00, 12.00, 17.00)' in line and '0.020 (0.020, 0.010, 0.030)' in line   # FD, KID


def test_jobs_train_rows_side_by_side_on_a_share_of_the_cores(tmp_path, monkeypatch):
    """--jobs 2: both trainings are under way at once (each waits for the other at a barrier, which
    times out if they ran one after the other), each with --threads cores // 2; the estimate shrinks by
    SIDE_BY_SIDE / 2."""
    meet, calls = threading.Barrier(2, timeout=20), []

    def fake_run(cmd, log):
        calls.append(cmd)
        meet.wait()
    monkeypatch.setattr(ft, 'run', fake_run)
    monkeypatch.setattr(ft.os, 'cpu_count', lambda: 4)
    ft.train_side_by_side(tmp_path, ['kld_d_k1', 'kld_d_nz0'], 'data', jobs=2)
    assert sorted(c[c.index('--out') + 1] for c in calls) == [str(tmp_path / 'kld_d_k1'), str(tmp_path / 'kld_d_nz0')]
    assert all(c[c.index('--threads') + 1] == '2' for c in calls)
    assert ['--K', '1'] == calls[[str(tmp_path / 'kld_d_k1') in c for c in calls].index(True)][4:6]
    seeds = {'kld_d_k1': [0], 'kld_d_nz0': [0]}
    _, one = ft.estimate(tmp_path, ['kld_d_k1', 'kld_d_nz0'], n=100, seeds=seeds)
    _, two = ft.estimate(tmp_path, ['kld_d_k1', 'kld_d_nz0'], n=100, seeds=seeds, jobs=2)
    sampling = 100 * (1 + 4) * ft.SAMPLE_SECONDS_PER_NFE
    assert two - sampling == pytest.approx((one - sampling) * ft.SIDE_BY_SIDE / 2)


def test_after_a_failed_training_no_queued_row_starts_and_the_runs_under_way_end(tmp_path, monkeypatch):
    """One slot: the first row fails, the two queued behind it never start. Two slots: the row under
    way beside the failing one runs to its end before the failure is raised."""
    started, finished, failed = [], [], threading.Event()

    def fake_run(cmd, log):
        row = Path(cmd[cmd.index('--out') + 1]).name
        started.append(row)
        if row == 'kld_d_k1':
            failed.set()
            raise SystemExit('failed (exit 1)')
        assert failed.wait(timeout=20)       # still running when the other fails
        finished.append(row)
    monkeypatch.setattr(ft, 'run', fake_run)
    with pytest.raises(SystemExit, match='failed'):
        ft.train_side_by_side(tmp_path, ['kld_d_k1', 'kld_d_nz0', 'kld_d_post'], 'data', jobs=1)
    assert started == ['kld_d_k1'] and finished == []
    started.clear()
    failed.clear()
    with pytest.raises(SystemExit, match='failed'):
        ft.train_side_by_side(tmp_path, ['kld_d_nz0', 'kld_d_k1'], 'data', jobs=2)
    assert sorted(started) == ['kld_d_k1', 'kld_d_nz0'] and finished == ['kld_d_nz0']


def test_image_lines_draws_one_labelled_line_per_entry(tmp_path):
    """The figure helper of samples.png and nfe_samples.png: nothing for no lines; with lines, a PNG
    whose height grows with their number (one row of images each)."""
    from PIL import Image
    import torch
    ft.image_lines(tmp_path / 'none.png', [])
    assert not (tmp_path / 'none.png').exists()
    images = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    ft.image_lines(tmp_path / 'one.png', [('a', images)])
    ft.image_lines(tmp_path / 'three.png', [('a', images), ('b', images), ('c', images)])
    heights = [Image.open(tmp_path / f'{name}.png').size[1] for name in ('one', 'three')]
    assert heights[1] > 2 * heights[0]


def test_side_by_side_only_for_two_rows_or_more_and_no_more_lanes_than_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(ft.os, 'cpu_count', lambda: 2)
    seeds = {'kld_d_k1': [0], 'kld_d_nz0': [0], 'kld_d_post': [0]}
    _, alone = ft.estimate(tmp_path, ['kld_d_k1'], n=100, seeds=seeds)
    _, one_row = ft.estimate(tmp_path, ['kld_d_k1'], n=100, seeds=seeds, jobs=2)
    assert one_row == alone                                  # one row left: nothing runs beside it
    _, two = ft.estimate(tmp_path, ['kld_d_k1', 'kld_d_nz0', 'kld_d_post'], n=100, seeds=seeds, jobs=2)
    lines, three = ft.estimate(tmp_path, ['kld_d_k1', 'kld_d_nz0', 'kld_d_post'], n=100, seeds=seeds, jobs=3, pnp=True)
    assert three == two and 'trainings 2 at a time' in '\n'.join(lines)      # 2 cores: 2 lanes, not 3
    assert lines[-1] == 'plug-and-play (--pnp): not in this estimate'


def test_scores_count_only_for_the_weights_the_row_has_now(tmp_path):
    """A row scored from the shipped weights, then trained in the same root: the old scores are not
    the new weights' (they were reported with the new grid); a DDPM's unclamped scores are redone."""
    shipped = ft.ROOT / 'checkpoints' / 'fashion_kld_d.pt'
    out = ft.eval_dir(tmp_path, 'kld_d', 100, 0)
    out.mkdir(parents=True)
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(shipped), fd=65.78)))
    assert ft.cached(tmp_path, 'kld_d', 100, 0, shipped=True)['fd'] == 65.78
    assert ft.cached(tmp_path, 'kld_d', 100, 0, shipped=False) is None          # no weights: nothing counts
    final = tmp_path / 'kld_d' / 'checkpoints' / 'ckpt_00004000.pt'
    final.parent.mkdir(parents=True)
    final.write_bytes(b'trained')
    assert ft.cached(tmp_path, 'kld_d', 100, 0, shipped=True) is None           # the row's own run now
    ddpm = ft.ROOT / 'checkpoints' / 'fashion_ddpm.pt'
    out = ft.eval_dir(tmp_path, 'ddpm', 100, 0, 10)
    out.mkdir(parents=True)
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(ddpm), fd=38.93)))
    assert ft.cached(tmp_path, 'ddpm', 100, 0, 10, shipped=True) is None        # sampled unclamped
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(ddpm), fd=36.62, clip_x0=True)))
    assert ft.cached(tmp_path, 'ddpm', 100, 0, 10, shipped=True)['fd'] == 36.62


def test_a_row_named_twice_is_refused(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, str(ft.ROOT / 'bench' / 'fashion_table.py'), '--rows', 'mmse_d', 'mmse_d',
                          '--dry-run', '--root', str(tmp_path / 'r')], capture_output=True, text=True)
    assert out.returncode == 2 and 'error: --rows names mmse_d more than once' in out.stderr


def test_the_floor_is_labelled_with_the_n_it_was_scored_at(tmp_path):
    shares = {'Bag': 0.1, 'Shirt': 0.9}
    floor = dict(fd=0.5, kid_mean=0.0, precision=0.9, recall=0.9, mean_pixel=56.0, n=500, class_shares=shares)
    ft.write_table(tmp_path, ['floor'], {'floor': [floor]}, 500)
    assert '| 500 training images (the floor) |' in (tmp_path / 'table.md').read_text()


def test_train_minutes_come_from_the_run_whose_generator_is_scored(tmp_path):
    """The shipped KLD-SR file records 0.602 s a step (40 minutes for 4,000 steps, the table's figure); once
    the row has its own final checkpoint, that run's log decides, and without a log nothing is known (the
    shipped file's rate belongs to another run)."""
    assert ft.train_minutes(tmp_path, 'kld_sr') is None                          # no generator at all
    assert ft.train_minutes(tmp_path, 'kld_sr', shipped=True) == pytest.approx(4000 * 0.6019494 / 60)
    final = tmp_path / 'kld_sr' / 'checkpoints' / 'ckpt_00004000.pt'
    final.parent.mkdir(parents=True)
    final.write_bytes(b'trained')
    assert ft.source(tmp_path, 'kld_sr', shipped=True) == 'trained'
    assert ft.train_minutes(tmp_path, 'kld_sr', shipped=True) is None
    (tmp_path / 'kld_sr' / 'log.jsonl').write_text(json.dumps(dict(step=50, img_per_s=64.0)) + '\n')
    assert ft.train_minutes(tmp_path, 'kld_sr', shipped=True) == pytest.approx(4000 * 32 / 64.0 / 60)


def test_the_runner_keeps_its_results_with_command_date_and_machine_and_publishes_them(tmp_path, monkeypatch):
    import render
    table = dict(n=100, rows=[ft.summarise('kld_d', [scored(5.0, 4, 10.0)])])
    monkeypatch.setattr(sys, 'argv', ['bench/fashion_table.py', '--rows', 'kld_d', '--n', '100'])
    ft.write_results(tmp_path, table, None, None)
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['command'] == 'python bench/fashion_table.py --rows kld_d --n 100'
    assert results['table'] == table and results['nfe'] is None and len(results['date']) == 10
    assert 'cores' in results['machine']
    (tmp_path / 'repo' / 'results').mkdir(parents=True)
    monkeypatch.setattr(ft, 'ROOT', tmp_path / 'repo')
    monkeypatch.setattr(render, 'ROOT', tmp_path / 'repo')          # no documents there: nothing rendered
    ft.publish(tmp_path, 'fashion_small')
    assert (tmp_path / 'repo' / 'results' / 'fashion_small.json').read_text() == (tmp_path / 'results.json').read_text()
    with pytest.raises(Exception, match='letters, digits'):
        ft.results_name('../README')
