"""The learning-curve runner (bench/fashion_curves.py): what it samples at each snapshot, its cache keyed
on the checkpoint, the claims read from the points, its estimate from the runs' own logs, and one
snapshot sampled and scored end to end with the shipped generator and classifier (no data set)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module
import fashion_curves as fc  # noqa: E402
import train_images  # noqa: E402


def test_each_row_trains_its_preset_with_every_checkpoint_kept():
    for row, (_, preset, flags, steps) in fc.ROWS.items():
        args = train_images.parse_args(fc.train_args(row, 'data', 1, False))
        plain = train_images.parse_args(['--preset', preset, *flags])
        assert args.max_steps == steps and args.keep_ckpts == 0 and args.threads == 1 and not args.resume
        # nothing else differs from the preset: the 4,000-step snapshot is fashion_table's model
        expected = dict(keep_ckpts=0, threads=1, **({} if plain.max_steps == steps else dict(max_steps=steps)))
        assert {k: v for k, v in vars(args).items() if getattr(plain, k) != v} == expected
    assert train_images.parse_args(fc.train_args('kld_d_k1', 'data', 0, True)).K == 1
    assert train_images.parse_args(fc.train_args('kld_d_lrd', 'data', 0, True)).lr_D == 1.25e-4


def test_samplings_of_a_snapshot():
    assert fc.samplings('kld_d', 1000, 5000, 500) == [(5000, None, 4)]
    assert fc.samplings('kld_d_k1', 1000, 5000, 500) == [(5000, None, 1)]
    assert fc.samplings('kld_sr', 1000, 5000, 500) == [(5000, None, 7)]
    assert fc.samplings(fc.DDPM, 2000, 5000, 500) == []                # between the DDPM's budgets
    assert fc.samplings(fc.DDPM, 4000, 5000, 500) == [(5000, s, s) for s in fc.DDPM_STEPS] + [(500, fc.ANCESTRAL, 1000)]
    assert fc.samplings(fc.DDPM, 16000, 5000, 0) == [(5000, s, s) for s in fc.DDPM_STEPS]
    assert fc.eval_dir(Path('r'), fc.DDPM, 4000, 500, fc.ANCESTRAL).name == 'eval_step04000_n500_seed0_ancestral'
    assert fc.eval_dir(Path('r'), fc.DDPM, 4000, 500, 1000).name == 'eval_step04000_n500_seed0_ddim1000'


def ckpt(root, row, step):
    path = root / row / 'checkpoints' / f'ckpt_{step:08d}.pt'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'x')
    return path


def test_a_score_counts_only_for_the_checkpoint_it_was_made_from(tmp_path):
    path = ckpt(tmp_path, 'kld_d', 1000)
    ckpt(tmp_path, 'kld_d', 1500)                     # not a rung: never scored
    assert fc.snapshots(tmp_path, 'kld_d') == {1000: path}
    # the shipped model, a second training run of the preset at 4,000 steps, is scored beside the ladder
    assert fc.todo(tmp_path, 50, 0) == [('kld_d', 1000, 50, None, 4), (fc.SHIPPED, 4000, 50, None, 4)]
    out = fc.eval_dir(tmp_path, 'kld_d', 1000, 50, None)
    out.mkdir()
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(path))))
    os.utime(path, (1, 1))
    assert fc.scored(tmp_path, 'kld_d', 1000, 50, None) is not None
    assert fc.todo(tmp_path, 50, 0) == [(fc.SHIPPED, 4000, 50, None, 4)]
    os.utime(path)                                     # the checkpoint was written again after the scores
    assert fc.scored(tmp_path, 'kld_d', 1000, 50, None) is None
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(tmp_path / 'other.pt'))))
    assert fc.scored(tmp_path, 'kld_d', 1000, 50, None) is None


def test_a_score_of_the_shipped_file_counts_from_another_copy_of_the_code_while_the_bytes_agree(tmp_path):
    copy = tmp_path / 'code-old' / 'fashion_kld_d.pt'
    copy.parent.mkdir()
    shutil.copy(fc.ROOT / 'checkpoints' / 'fashion_kld_d.pt', copy)
    out = fc.eval_dir(tmp_path, fc.SHIPPED, 4000, 50, None)
    out.mkdir(parents=True)
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(copy), fd=1.0)))
    assert fc.scored(tmp_path, fc.SHIPPED, 4000, 50, None)['fd'] == 1.0
    copy.write_bytes(copy.read_bytes()[:-1] + b'?')     # another model under the same name: scored again
    assert fc.scored(tmp_path, fc.SHIPPED, 4000, 50, None) is None
    copy.unlink()
    assert fc.scored(tmp_path, fc.SHIPPED, 4000, 50, None) is None


def point(row, step, fd, kid, precision, recall, sampler=None):
    return dict(row=row, label=fc.ROWS[row][0], step=step, images=32 * step, n=100, nfe=4, sampler=sampler, fd=fd,
                kid_mean=kid, precision=precision, recall=recall, min_share=0.05, rarest='Bag')


def test_claims_say_from_which_budget_and_at_which_budgets_each_metric_favours_the_better_row():
    points = [point('kld_d', 4000, 10, 0.5, 0.6, 0.1), point('kld_d_k1', 4000, 5, 0.1, 0.7, 0.05),
              point('kld_d', 16000, 4, 0.2, 0.6, 0.2), point('kld_d_k1', 16000, 5, 0.3, 0.65, 0.05),
              point('kld_d', 8000, 1, 0.1, 0.9, 0.9)]          # K = 1 has no 8,000-step point: not compared
    lines = fc.claim_lines(points)
    k = next(line for line in lines if line.startswith('- K = 4'))
    assert k == ('- K = 4 steps beat K = 1 (Table 3): holds from 1x on recall, from 4x on FD, KID; not up to 4x '
                 '(512,000 images) on precision, rarest class. By budget: FD better at 4x, worse at 1x; KID better at '
                 '4x, worse at 1x; precision worse at 1x 4x; recall better at 1x 4x; rarest class level at 1x 4x.')
    assert any(line.startswith('- the SR process') and 'not scored yet' in line for line in lines)
    assert lines[-1].endswith('not measured yet: every difference counts.')
    # with a second training run of the preset, differences within its distance are level
    shipped = dict(point('kld_d', 4000, 11.5, 0.45, 0.67, 0.16), row=fc.SHIPPED)
    lines = fc.claim_lines(points + [shipped])
    k = next(line for line in lines if line.startswith('- K = 4'))
    assert k == ('- K = 4 steps beat K = 1 (Table 3): holds from 4x on KID, recall; not up to 4x (512,000 images) on '
                 'FD, precision, rarest class. By budget: FD level at 4x, worse at 1x; KID better at 4x, worse at 1x; '
                 'precision level at 4x, worse at 1x; recall better at 4x, level at 1x; rarest class level at 1x 4x.')
    assert lines[-1] == ('Level: within the spread between two training runs of RGM-KLD-D at 1x, FD 1.5, KID 0.05, '
                         'precision 0.07, recall 0.06, rarest class 0.0 points (one pair of runs).')
    # from a budget on means at it and at every later one
    assert fc.holds_from({4000: 'better', 8000: 'worse', 16000: 'better'}) == 16000
    assert fc.holds_from({4000: 'better', 8000: 'better'}) == 4000
    assert fc.holds_from({4000: 'better', 8000: 'level'}) is None
    # the preset's questions are read the same way, after the paper's claims
    text = fc.render_claims(dict(points=points + [point('kld_d_lam3e-3', 4000, 8, 0.4, 0.6, 0.2)]))
    assert text.index('- MAP (RGM)') < text.index("The preset's own questions:") < text.index('- lambda = 3e-3')
    assert "- lambda = 3e-3 beats the preset's 1e-3: holds from 1x on FD, KID, recall; not up to 1x (128,000" in text
    short = fc.render_claims_short(dict(points=points)).splitlines()
    assert short[0] == ('- K = 4 steps beat K = 1 (Table 3): holds from 1x on recall, from 4x on FD, KID; not up to 4x '
                        '(512,000 images) on precision, rarest class.')


def test_the_estimate_uses_the_logged_rates_and_no_more_lanes_than_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(fc.os, 'cpu_count', lambda: 2)
    ckpt(tmp_path, 'kld_d', 1000)
    (tmp_path / 'kld_d' / 'log.jsonl').write_text('\n'.join(json.dumps(dict(step=s, img_per_s=r))
                                                            for s, r in [(50, 8.0), (100, 16.0), (150, 64.0)]) + '\n')
    lines, seconds = fc.plan(tmp_path, 10, 0, jobs=3)
    # every row at the median logged rate, 16 images/s at batch 32: 2 s a step; two lanes on two cores
    steps = sum(steps for *_, steps in fc.ROWS.values()) - 1000
    sampling = sum(10 * nfe * fc.SECONDS_PER_NFE for row, (_, _, _, last) in fc.ROWS.items()
                   for step in fc.RUNGS if step <= last for _, _, nfe in fc.samplings(row, step, 10, 0))
    assert seconds == pytest.approx(steps * 2.0 / 2 + sampling)
    assert 'step  1000 of 16000' in lines[0] and '2 at a time' in lines[-1]


def test_a_snapshot_sampled_scored_and_written(tmp_path):
    """The shipped RGM-KLD-D stands in for the kld_d row's snapshot at 4,000 steps: score() runs sample.py
    on it and on the shipped file itself (the classifier's stored test statistics, no data set), collect()
    reads the points back, the two runs are level on every metric (the same weights and seed), and
    write() renders the table, the claims and the figure."""
    root = tmp_path / 'curves'
    snap = root / 'kld_d' / 'checkpoints' / 'ckpt_00004000.pt'
    snap.parent.mkdir(parents=True)
    shutil.copy(fc.ROOT / 'checkpoints' / 'fashion_kld_d.pt', snap)
    fc.score(root, fc.todo(root, 20, 0), str(tmp_path / 'no-data'), fc.metrics.DEFAULT_CLASSIFIER, threads=1)
    points = fc.collect(root, 20, 0)
    assert [p['row'] for p in points] == ['kld_d', fc.SHIPPED]
    p = points[0]
    assert (p['row'], p['step'], p['images'], p['nfe'], p['n']) == ('kld_d', 4000, 128_000, 4, 20)
    r = json.loads((fc.eval_dir(root, 'kld_d', 4000, 20, None) / 'metrics.json').read_text())
    assert p['fd'] == r['fd'] > 0 and p['recall'] == r['recall'] and r['ckpt'] == str(snap)
    assert fc.spread(points) == dict(fd=0.0, kid_mean=0.0, precision=0.0, recall=0.0, min_share=0.0)
    assert fc.todo(root, 20, 0) == []                  # scored once
    floor = dict(fd=0.5, kid_mean=-0.01, precision=0.86, recall=0.9)
    fc.write(root, points, 20, 0, 'python bench/fashion_curves.py --n 20', floor)
    assert (root / 'curves.png').stat().st_size > 0
    assert json.loads((root / 'curves.json').read_text())['points'] == points
    text = (root / 'curves.md').read_text()
    assert '- K = 4 steps beat K = 1 (Table 3): not scored yet.' in text
    assert '| RGM-KLD-D, K = 4 | 1x (128,000) | chain, 4 | ' + f"{p['fd']:.2f} |" in text
    assert 'Made by `python bench/fashion_curves.py --n 20`' in text
    assert '| 20 real training images (the floor at this n) | | | 0.50 | -0.010 | 0.860 | 0.900 | |' in text


def test_too_few_samples_are_refused_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, str(fc.ROOT / 'bench' / 'fashion_curves.py'), '--root', str(tmp_path / 'r'),
                          '--n', '5'], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith('error: --n 5')
    assert not (tmp_path / 'r').exists()


def test_ship_exports_the_rgm_model_only_when_it_beats_the_shipped_one(tmp_path, monkeypatch):
    import models
    root, repo = tmp_path / 'curves', tmp_path / 'repo'
    (repo / 'checkpoints').mkdir(parents=True)
    shipped = models.load_checkpoint(fc.ROOT / 'checkpoints' / 'fashion_kld_d.pt')
    shipped['G_ema'] = {k: v.float() for k, v in shipped['G_ema'].items()}
    shipped['step'] = 16000
    snap = root / 'kld_d' / 'checkpoints' / 'ckpt_00016000.pt'
    snap.parent.mkdir(parents=True)
    models.save_checkpoint(shipped, snap)
    scores = {}
    monkeypatch.setattr(fc, 'ROOT', repo)
    monkeypatch.setattr(fc, 'collect', lambda root, n, a: [dict(point('kld_d', 16000, 5, scores['kid'], 0.6, scores['recall'])),
                                                           dict(point('kld_d', 4000, 9, 0.5, 0.6, 0.1), row=fc.SHIPPED)])
    scores.update(kid=0.4, recall=0.05)                 # better KID, worse recall: the shipped one stays
    assert fc.ship(root, 10) == [] and not (repo / 'checkpoints' / 'fashion_kld_d_4x.pt').exists()
    scores.update(kid=0.4, recall=0.2)
    assert fc.ship(root, 10) == [repo / 'checkpoints' / 'fashion_kld_d_4x.pt']
    G, meta = models.load_generator(repo / 'checkpoints' / 'fashion_kld_d_4x.pt')
    assert models.load_checkpoint(repo / 'checkpoints' / 'fashion_kld_d_4x.pt')['step'] == 16000
    for name, v in G.state_dict().items():
        assert torch_equal_half(v, shipped['G_ema'][name])


def torch_equal_half(a, b):
    """fp16 export: equal to the fp32 weights rounded to half precision."""
    return bool((a == b.half().float()).all()) if a.is_floating_point() else bool((a == b).all())


def test_the_status_lists_each_rows_scored_snapshots():
    results = dict(points=[point('kld_d', 1000, 1, 1, 1, 1), point('kld_d', 4000, 1, 1, 1, 1),
                           point('kld_d_lam3e-3', 4000, 1, 1, 1, 1)])
    lines = fc.render_status(results).splitlines()
    assert lines[0] == '- RGM-KLD-D, K = 4: 1k, 4k of 1k, 2k, 4k, 8k, 16k steps scored'
    assert '- RGM-KLD-D, lambda = 3e-3: 4k of 1k, 2k, 4k steps scored' in lines
    assert '- MMSE, K = 4 (same network without z): not scored yet' in lines and len(lines) == len(fc.ROWS)
    results['points'].append(point(fc.DDPM, 4000, 1, 1, 1, 1, sampler='DDIM 4'))     # its rungs: its two budgets
    assert '- DDPM, same network: 4k of 4k, 16k steps scored' in fc.render_status(results).splitlines()
    results['points'].pop()
    results['training'] = {'kld_d': dict(steps=16000, seconds_per_step=0.42)}
    assert fc.render_status(results).splitlines()[0] == ('- RGM-KLD-D, K = 4: 1k, 4k of 1k, 2k, 4k, 8k, 16k steps scored; '
                                                         '16,000 steps trained at 0.42 s a step (112 min)')


def test_the_training_record_reads_each_rows_log(tmp_path):
    ckpt(tmp_path, 'kld_d', 2000)
    (tmp_path / 'kld_d' / 'log.jsonl').write_text('\n'.join(json.dumps(dict(step=s, img_per_s=r))
                                                            for s, r in [(50, 40.0), (100, 80.0), (150, 60.0)]) + '\n')
    assert fc.training_record(tmp_path) == {'kld_d': dict(steps=2000, seconds_per_step=32 / 60.0)}


def test_the_main_view_shows_each_curve_row_at_1x_and_4x():
    results = dict(n=100, ancestral_n=5, floor=dict(fd=0.5, kid_mean=0.0, precision=0.9, recall=0.9),
                   points=[point('kld_d', 4000, 9.234, 0.5, 0.6, 0.1194), point('kld_d', 16000, 2, 0.1, 0.7, 0.5),
                           point('kld_d', 1000, 50, 1, 1, 0),                         # below 1x: not shown
                           dict(point(fc.DDPM, 16000, 3, 1, 1, 0.7, sampler='DDIM 25'), nfe=25),
                           dict(point(fc.DDPM, 4000, 30, 1, 1, 0.1, sampler='ancestral'), nfe=1000, n=5),
                           point('kld_d_lam3e-3', 4000, 5, 1, 1, 0.2)])               # a 4,000-step row
    lines = fc.render_main(results).splitlines()
    assert lines[0] == '| model | NFE | FD | KID | precision | recall | rarest class |'
    assert lines[2] == '| 100 real training images (the floor) | | 0.50 | 0.000 | 0.900 | 0.900 | |'
    assert lines[3] == '| RGM-KLD-D, K = 4 | 4 | 9.23 -> 2.00 | 0.500 -> 0.100 | 0.600 -> 0.700 | 0.119 -> 0.500 | 5.0% -> 5.0% |'
    assert lines[4] == '| DDPM, same network, DDIM 25 | 25 | ... -> 3.00 | ... -> 1.000 | ... -> 1.000 | ... -> 0.700 | ... -> 5.0% |'
    assert lines[5].startswith('| DDPM, same network, ancestral (n = 5) | 1000 | 30.00 -> ... |') and lines[6] == ''


def test_the_lambda_table_gives_the_weight_per_image():
    results = dict(n=10, points=[point('kld_d_lam3e-3', 4000, 7, 0.3, 0.6, 0.2), point('kld_d', 4000, 9, 0.5, 0.6, 0.1),
                                 point('kld_d_lam0', 4000, 8, 0.4, 0.5, 0.05), point('kld_d', 16000, 2, 0.1, 0.7, 0.5)])
    lines = fc.render_lambda(results).splitlines()
    assert lines[2:5] == ['| 0 | 0.0 | 8.00 | 0.400 | 0.500 | 0.050 | 5.0% |', '| 1e-3 | 1.0 | 9.00 | 0.500 | 0.600 | 0.100 | 5.0% |',
                          '| 3e-3 | 3.1 | 7.00 | 0.300 | 0.600 | 0.200 | 5.0% |'] and lines[5] == ''
    assert '3.1 for the paper\'s CIFAR-10' in lines[6] and 'lambda 3e-3 weighs what 1e-3 weighs on CIFAR-10' in lines[6]


def test_the_equal_budget_table_gives_ratios_to_rgm_and_where_ddim_reaches_it():
    def at(row, fd, nfe, ms, sampler=None, n=100):
        return dict(point(row, 16000, fd, 0.1, 0.6, 0.3, sampler=sampler), nfe=nfe, ms_per_image=ms, n=n)
    results = dict(n=100, points=[at('kld_d', 2.0, 4, 10.0), at(fc.DDPM, 5.0, 4, 10.0, 'DDIM 4'),
                                  at(fc.DDPM, 1.9, 10, 25.0, 'DDIM 10'), at(fc.DDPM, 1.5, 25, 60.0, 'DDIM 25'),
                                  at(fc.DDPM, 1.0, 1000, 2400.0, 'ancestral', n=50)])
    text = fc.render_ddpm(results)
    assert '| 4x (512,000) | DDPM, DDIM 10 | 10 | 1.90 | 0.100 | 0.600 | 0.300 | 5.0% | 25.0 | 2.5x, 2.5x |' in text
    assert '| 4x (512,000) | DDPM, ancestral (n = 50) | 1000 | 1.00 |' in text and '| 250x, 240x |' in text
    assert "- 4x: DDIM reaches RGM-KLD-D's FD (2.00) first at 10 steps (DDIM 10: FD 1.90, 2.5x the NFE)." in text
    assert '- 1x: not scored yet.' in text
    results['points'] = [p for p in results['points'] if p['sampler'] in (None, 'DDIM 4', 'ancestral')]
    assert "- 4x: no DDIM up to 25 steps reaches RGM-KLD-D's FD (2.00; best 5.00)." in fc.render_ddpm(results)
    # a DDIM point without clamping x0 is a row of its own, and counts for reaching RGM's FD
    results['points'].append(at(fc.DDPM, 1.95, 4, 10.0, 'DDIM 4' + fc.UNCLAMPED))
    text = fc.render_ddpm(results)
    assert '| 4x (512,000) | DDPM, DDIM 4, x0 not clamped | 4 | 1.95 |' in text
    assert "- 4x: DDIM reaches RGM-KLD-D's FD (2.00) first at 4 steps (DDIM 4, x0 not clamped: FD 1.95, 1x the NFE)." in text


def fake_point(root, row, step, n, steps, images, clip=True):
    """A snapshot scored by hand: its checkpoint, a metrics.json that names it, and the samples."""
    import numpy as np
    snap = root / row / 'checkpoints' / f'ckpt_{step:08d}.pt'
    if not snap.exists():
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.write_bytes(b'x')
        os.utime(snap, (1, 1))
    out = fc.eval_dir(root, row, step, n, steps, clip)
    out.mkdir(parents=True)
    np.savez(out / 'samples.npz', images.permute(0, 2, 3, 1).numpy())
    (out / 'metrics.json').write_text(json.dumps(dict(ckpt=str(snap), n=n, sampling_seconds=0.1 * n, threads=1,
                                                      fd=99.0, kid_mean=9.0, precision=0.0, recall=0.0,
                                                      class_shares={'Bag': 1.0})))


def test_the_ancestral_points_are_compared_at_their_own_n_on_the_first_samples_of_the_others(tmp_path, monkeypatch):
    """equal_n scores the first m samples of RGM-KLD-D and of each DDIM sampler at the budget of every
    ancestral point (the shipped classifier's stored test statistics, no data set), caches them beside the
    samples while the samples are older, and render_ddpm sets them beside the ancestral point."""
    import torch
    monkeypatch.setattr(fc, 'floor_of', lambda classifier, data_dir, n: dict(fd=0.5, kid_mean=0.0, precision=0.9,
                                                                           recall=0.9))
    monkeypatch.setattr(fc.metrics.data, 'find_fashion_files', lambda *a, **k: None)    # as on a machine without it
    gen = torch.Generator().manual_seed(0)
    sets = {name: torch.randint(0, 256, (40, 1, 32, 32), generator=gen, dtype=torch.uint8) for name in ('rgm', 'ddim')}
    root = tmp_path / 'curves'
    fake_point(root, 'kld_d', 16000, 40, None, sets['rgm'])
    fake_point(root, fc.DDPM, 16000, 40, 10, sets['ddim'])
    assert fc.equal_n(root, 40, 20, fc.metrics.DEFAULT_CLASSIFIER, str(tmp_path / 'no-data')) is None  # no ancestral
    fake_point(root, fc.DDPM, 16000, 20, fc.ANCESTRAL, sets['ddim'][:20])
    # --unclamped: every DDPM sampling again without clamping x0, in folders of their own
    assert fc.unclamped_todo(root, 40, 20) == [(fc.DDPM, 16000, 40, s, s) for s in fc.DDPM_STEPS] + [
        (fc.DDPM, 16000, 20, fc.ANCESTRAL, 1000)]
    fake_point(root, fc.DDPM, 16000, 20, fc.ANCESTRAL, sets['ddim'][20:], clip=False)
    assert (fc.DDPM, 16000, 20, fc.ANCESTRAL, 1000) not in fc.unclamped_todo(root, 40, 20)
    fake_point(root, fc.DDPM, 16000, 40, 10, sets['rgm'], clip=False)      # an unclamped DDIM point: a peer too
    same = fc.equal_n(root, 40, 20, fc.metrics.DEFAULT_CLASSIFIER, str(tmp_path / 'no-data'))
    assert same['n'] == 20 and same['floor']['fd'] == 0.5
    assert [(p['row'], p['sampler'], p['nfe'], p['n']) for p in same['points']] == [
        ('kld_d', None, 4, 20), (fc.DDPM, 'DDIM 10', 10, 20), (fc.DDPM, 'DDIM 10' + fc.UNCLAMPED, 10, 20)]
    assert same['points'][2]['fd'] == pytest.approx(same['points'][0]['fd'])     # the same 20 images, scored alike
    net, _ = fc.metrics.load_classifier(fc.metrics.DEFAULT_CLASSIFIER)
    ref = fc.metrics.stored_reference(fc.metrics.DEFAULT_CLASSIFIER)
    first = fc.metrics.scores_against(net, sets['rgm'][:20], ref)
    rgm = same['points'][0]
    assert rgm['fd'] == pytest.approx(first['fd']) and rgm['recall'] == pytest.approx(first['recall'])
    assert rgm['fd'] != pytest.approx(fc.metrics.scores_against(net, sets['rgm'], ref)['fd'])   # not all 40
    assert rgm['ms_per_image'] == pytest.approx(100.0)            # the sampling's own time per image
    # the cache is used while it is newer than the samples, and made again after them
    cache = fc.eval_dir(root, 'kld_d', 16000, 40, None) / 'first20.json'
    cache.write_text(json.dumps(dict(json.loads(cache.read_text()), fd=123.0)))
    assert fc.equal_n(root, 40, 20, fc.metrics.DEFAULT_CLASSIFIER, 'no-data')['points'][0]['fd'] == 123.0
    samples = cache.parent / 'samples.npz'
    os.utime(samples, (cache.stat().st_mtime + 10,) * 2)
    assert fc.equal_n(root, 40, 20, fc.metrics.DEFAULT_CLASSIFIER, 'no-data')['points'][0]['fd'] == pytest.approx(first['fd'])
    # the equal-budget table adds the comparison at n = 20
    points = fc.collect(root, 40, 20)
    text = fc.render_ddpm(dict(n=40, points=points, equal_n=same))
    assert "At the ancestral points' n = 20: the first 20 of each sampler's 40 samples" in text
    assert '| | 20 real training images (the floor at this n) | | 0.50 | 0.000 | 0.900 | 0.900 | |' in text
    assert f"| 4x (512,000) | RGM-KLD-D, its chain | 4 | {rgm['fd']:.2f} |" in text
    assert '| 4x (512,000) | DDPM, ancestral | 1000 |' in text
    assert '- 4x: the DDPM\'s ancestral (1000 NFE) against RGM-KLD-D (4 NFE), both at n = 20: ' in text
    assert ('| 4x (512,000) | DDPM, ancestral, x0 not clamped | 1000 | 99.00 |' in text
            and "- 4x: the DDPM's ancestral, x0 not clamped (1000 NFE) against" in text)
    rows = [line for line in text[text.index("At the ancestral points'"):].splitlines() if line.startswith('| 4x')]
    assert [row.split(' | ')[1] for row in rows] == ['RGM-KLD-D, its chain', 'DDPM, DDIM 10', 'DDPM, DDIM 10, x0 not clamped',
                                                      'DDPM, ancestral', 'DDPM, ancestral, x0 not clamped']
    assert fc.render_equal_n(dict(n=40, points=points, equal_n=None)) == ''


def test_the_readme_view_of_the_equal_budget_comparison_sets_each_sampler_beside_rgm_at_one_n():
    def at(row, step, fd, nfe, sampler=None, n=100):
        return dict(point(row, step, fd, 0.1, 0.6, 0.3, sampler=sampler), nfe=nfe, n=n)
    points = [at('kld_d', 16000, 2.0, 4), at(fc.DDPM, 16000, 8.0, 25, 'DDIM 25'), at(fc.DDPM, 16000, 3.0, 1000, 'ancestral', 10)]
    results = dict(n=100, points=points, equal_n=dict(n=10, points=[at('kld_d', 16000, 6.5, 4, n=10)]))
    with_unclamped = dict(results, points=points + [at(fc.DDPM, 16000, 4.5, 1000, 'ancestral' + fc.UNCLAMPED, 10)])
    assert ("(250x the NFE) 3.00 / 0.100 / 0.600 / 0.300 / 5.0% (4.50 / 0.100 / 0.600 / 0.300 / 5.0% with x0 not "
            "clamped) against RGM-KLD-D's 6.50" in fc.render_ddpm_short(with_unclamped))
    lines = fc.render_ddpm_short(results).splitlines()[2:]
    assert lines[0] == '- 1x: not scored yet.'
    assert lines[1] == ('- 4x (512,000 images each): RGM-KLD-D, 4 NFE, 2.00 / 0.100 / 0.600 / 0.300 / 5.0%; the DDPM by '
                        'DDIM 25 (6.25x the NFE) 8.00 / 0.100 / 0.600 / 0.300 / 5.0%; at n = 10, its ancestral sampler '
                        "(250x the NFE) 3.00 / 0.100 / 0.600 / 0.300 / 5.0% against RGM-KLD-D's 6.50 / 0.100 / 0.600 / "
                        '0.300 / 5.0%.')
    results['equal_n'] = None                          # no peers at the ancestral n: no ancestral comparison
    assert fc.render_ddpm_short(results).splitlines()[3].endswith('8.00 / 0.100 / 0.600 / 0.300 / 5.0%.')


def test_an_unclamped_sampling_asks_sample_py_for_it_and_writes_to_its_own_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fc, 'run', lambda cmd, log: calls.append(cmd))
    ckpt(tmp_path, fc.DDPM, 4000)
    for clip in (True, False):
        fc.score(tmp_path, [(fc.DDPM, 4000, 20, fc.ANCESTRAL, 1000)], 'data', 'c.pt', 1, clip=clip)
    fc.score(tmp_path, [(fc.DDPM, 4000, 20, 10, 10)], 'data', 'c.pt', 1)
    (clamped, unclamped, ddim) = calls
    assert '--no-clip-x0' not in clamped and '--no-clip-x0' in unclamped
    out = lambda cmd: cmd[cmd.index('--out') + 1]  # noqa: E731
    assert out(clamped).endswith('eval_step04000_n20_seed0_ancestral')
    assert out(unclamped).endswith('eval_step04000_n20_seed0_ancestral_noclip')
    # sample.py samples ancestrally without --steps; --steps 1000 would be DDIM over all 1000 levels
    assert '--steps' not in clamped and '--steps' not in unclamped
    assert ddim[ddim.index('--steps') + 1] == '10' and out(ddim).endswith('eval_step04000_n20_seed0_ddim10')
