"""Bad and unusual inputs to the four command lines and the bench scripts, table-driven: each case
asserts the exit (an argparse error, status 2, or a named exception), a message that names the
problem, and that an existing run directory is byte-for-byte unchanged. Files are built in tmp_path:
16-bit, RGBA, palette, truncated and zero-byte images, duplicate file names, text and truncated
checkpoints. Everything runs in this process (parse_args / main, the bench scripts through runpy),
no Python is spawned."""
import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import data
import models
import pnp
import sample
import toy2d
import train_images as ti

META = dict(schedule='d', K=4, discretisation='original', posterior=False, nz=8, image_size=32, channels=3)

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder):
    """{relative path: bytes} of every file under a folder."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    G, D = models.build_networks('tiny')
    path = tmp_path_factory.mktemp('ckpt') / 'ckpt.pt'
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, G_kwargs=dict(models.CONFIGS['tiny']['G']),
                                D_kwargs=dict(models.CONFIGS['tiny']['D']), meta=dict(META),
                                G=G.state_dict(), G_ema=None, D=D.state_dict()), path)
    return path


@pytest.fixture()
def old_run(tmp_path):
    """An output folder holding an earlier run's files."""
    out = tmp_path / 'out'
    (out / 'png').mkdir(parents=True)
    (out / 'png' / '000000.png').write_bytes(b'old sample')
    (out / 'metrics.json').write_text('{"old": 1}')
    (out / 'notes.txt').write_text('mine')
    return out


# ---- counts and scales refused at parsing, before anything is read or written -------------------

PARSE_ERRORS = [
    (ti.parse_args, ['--log-every', '0'], '--log-every'),
    (ti.parse_args, ['--sample-every', '-1'], '--sample-every'),
    (ti.parse_args, ['--ckpt-every', '0'], '--ckpt-every'),
    (ti.parse_args, ['--n-samples', '0'], '--n-samples'),
    (ti.parse_args, ['--max-steps', '-5'], '--max-steps'),
    (ti.parse_args, ['--batch-size', '0'], '--batch-size'),
    (ti.parse_args, ['--ema-decay', '1.5'], '--ema-decay'),
    (ti.parse_args, ['--ema-decay', '1'], '--ema-decay'),
    (ti.parse_args, ['--seed', '0', '--lr-G=-1e-4'], '--lr-G'),
    (ti.parse_args, ['--K', '0'], '--K'),
    (lambda a: sample.build_parser().parse_args(a), ['--ckpt', 'x.pt', '--n', '0'], '--n'),
    (lambda a: sample.build_parser().parse_args(a), ['--ckpt', 'x.pt', '--n', '-3'], '--n'),
    (lambda a: sample.build_parser().parse_args(a), ['--ckpt', 'x.pt', '--batch-size', '0'], '--batch-size'),
    (lambda a: sample.build_parser().parse_args(a), ['--ckpt', 'x.pt', '--batch-size', '-4'], '--batch-size'),
    (lambda a: pnp.build_parser().parse_args(a), ['--task', 'sr2', '--ckpt', 'x', '--folder', 'f', '--out', 'o',
                                                   '--n', '0'], '--n'),
    (lambda a: pnp.build_parser().parse_args(a), ['--task', 'sr2', '--ckpt', 'x', '--folder', 'f', '--out', 'o',
                                                   '--n', '-1'], '--n'),
    (lambda a: pnp.build_parser().parse_args(a), ['--task', 'sr2', '--ckpt', 'x', '--folder', 'f', '--out', 'o',
                                                   '--batch-size', '0'], '--batch-size'),
    (lambda a: pnp.build_parser().parse_args(a), ['--task', 'denoise', '--ckpt', 'x', '--folder', 'f', '--out', 'o',
                                                   '--sigma-y', '-25'], '--sigma-y'),
    (lambda a: toy2d.build_parser().parse_args(a), ['--iters', '-5'], '--iters'),
    (lambda a: toy2d.build_parser().parse_args(a), ['--n-samples', '0'], '--n-samples'),
    (lambda a: toy2d.build_parser().parse_args(a), ['--lr-decay', '2'], '--lr-decay'),
]


@pytest.mark.parametrize('parse, argv, flag', PARSE_ERRORS, ids=[' '.join(a[-2:]) for _, a, _ in PARSE_ERRORS])
def test_zero_and_negative_counts_fail_at_parsing(parse, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and ('positive' in err or '0 or more' in err or '[0, 1' in err)


BENCH = Path(__file__).resolve().parents[1] / 'bench'
# (script, argv, the flag refused). Each argv also holds flags that keep a regression cheap and inside
# tmp_path (--dry-run, tiny networks, no 1000-step row), so that it fails here as its own error.
BENCH_ERRORS = [
    ('sampling.py', ['--config', 'tiny', '--batch', '2', '--steps', '0', '--reps', '0'], '--reps'),
    ('sampling.py', ['--config', 'tiny', '--batch', '2', '--steps', '0', '--threads', '-1'], '--threads'),
    ('fashion_table.py', ['--dry-run', '--rows', 'floor', '--pnp-n', '0'], '--pnp-n'),
    ('fashion_table.py', ['--dry-run', '--rows', 'floor', '--nfe-n', '-1'], '--nfe-n'),
    ('pnp.py', ['--tasks', 'sr2', '--reps', '1', '--batch', '0'], '--batch'),
    ('models.py', ['--configs', 'tiny', '--reps', '0'], '--reps'),
    ('toy2d.py', ['--threads', '1', '--iters', '0'], '--iters'),
    ('train_step.py', ['--presets', 'tiny', '--variants', 'eager', '--threads', '1', '--steps', '0'], '--steps'),
    ('load.py', ['--threads', '1', '--busy', '-1'], '--busy'),
    ('gpu_report.py', ['--device', 'cpu', '--quick', '--sections', 'none', '--reps', '0'], '--reps'),
]


def test_bench_models_refuses_more_batch_sizes_than_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'path', [str(BENCH), *sys.path])
    monkeypatch.setattr(sys, 'argv', [str(BENCH / 'models.py'), '--configs', 'tiny', 'fashion', '--batch', '1', '2', '3'])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / 'models.py'), run_name='__main__')
    assert e.value.code == 2 and 'one per config (2), got 3' in capsys.readouterr().err


@pytest.mark.parametrize('script, argv, flag', BENCH_ERRORS, ids=[f'{s} {a[-2]} {a[-1]}' for s, a, _ in BENCH_ERRORS])
def test_bench_scripts_refuse_bad_counts_at_parsing(script, argv, flag, tmp_path, monkeypatch, capsys):
    """`python bench/<script> ...` run in this process (runpy, as __main__): exit 2 with one error line that
    names the flag (the argument types of cli.py). Before, `sampling.py --reps 0` sampled and then ended in
    an IndexError, and `fashion_table.py --pnp-n 0` went unchecked; an exception other than argparse's
    exit fails this test as itself."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [str(BENCH), *sys.path])       # as a script: its folder first
    monkeypatch.setattr(sys, 'argv', [str(BENCH / script), *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / script), run_name='__main__')
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ': error: ' in line]
    assert len(errors) == 1 and errors[0].startswith(f'{script}: error: argument {flag}')
    assert 'must be a positive' in errors[0] or 'must be 0 or more' in errors[0]


# ---- the --out rule: refuse a folder with files unless --overwrite, then no stale outputs ----------

def test_sample_refuses_a_used_folder_and_overwrite_leaves_no_stale_png(ckpt, old_run):
    before = snapshot(old_run)
    argv = ['--ckpt', str(ckpt), '--no-ema', '--n', '2', '--batch-size', '2', '--format', 'png', '--out', str(old_run)]
    with pytest.raises(FileExistsError, match='--overwrite'):
        sample.main(sample.build_parser().parse_args(argv))
    assert snapshot(old_run) == before
    sample.main(sample.build_parser().parse_args(argv + ['--overwrite']))
    assert sorted(p.name for p in (old_run / 'png').iterdir()) == ['000000.png', '000001.png']
    assert Image.open(old_run / 'png' / '000000.png').size == (32, 32)               # new, not the old bytes
    assert (old_run / 'notes.txt').read_text() == 'mine'                               # not ours: kept
    assert json.loads((old_run / 'metrics.json').read_text())['n'] == 2


def test_toy2d_refuses_a_used_folder(old_run):
    before = snapshot(old_run)
    with pytest.raises(FileExistsError, match='--overwrite'):
        toy2d.main(toy2d.build_parser().parse_args(['--iters', '1', '--out', str(old_run)]))
    assert snapshot(old_run) == before


def test_pnp_refuses_a_used_folder_and_denoise_needs_noise(ckpt, old_run, tmp_path):
    images = tmp_path / 'imgs'
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / 'a.png')
    before = snapshot(old_run)
    base = ['--ckpt', str(ckpt), '--no-ema', '--folder', str(images), '--out', str(old_run), '--M', '1']
    with pytest.raises(FileExistsError, match='--overwrite'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'sr2'] + base))
    with pytest.raises(ValueError, match='--sigma-y > 0'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'denoise', '--sigma-y', '0'] + base))
    assert snapshot(old_run) == before
    pnp.main(pnp.build_parser().parse_args(['--task', 'denoise'] + base + ['--overwrite']))
    summary = json.loads((old_run / 'summary.json').read_text())                     # strict JSON
    assert summary['sigma_y'] == 25.0 and (old_run / 'png').is_dir() and (old_run / 'notes.txt').is_file()


def test_pnp_refuses_inputs_with_the_same_file_name(ckpt, tmp_path):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / sub / 'x.png')
    with pytest.raises(ValueError, match='same file name'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(ckpt), '--no-ema', '--image',
                                                str(tmp_path / 'a' / 'x.png'), str(tmp_path / 'b' / 'x.png'),
                                                '--out', str(tmp_path / 'o')]))
    assert not (tmp_path / 'o').exists()


def test_json_never_holds_nan_or_infinity(tmp_path):
    cli.write_json(tmp_path / 'x.json', dict(psnr=float('inf'), ssim=[1.0, float('nan')]))
    assert json.loads((tmp_path / 'x.json').read_text(), parse_constant=pytest.fail) == dict(psnr=None, ssim=[1.0, None])


# ---- image files: one reader, 16-bit scaled, bad files named ------------------------------------

def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)          # 0 .. 65472, mean 32736
    Image.fromarray(values).save(tmp_path / 'deep.png')
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I')
    im = np.asarray(data.open_image(tmp_path / 'deep.png'), np.float64)
    assert im.mean() == pytest.approx(values.mean() * 255 / 65535, abs=0.01)
    x = data.to_model(data.open_image(tmp_path / 'deep.png'))
    assert x.shape == (1, 32, 32) and x.mean().item() == pytest.approx(values.mean() / 65535 * 2 - 1, abs=2e-3)


@pytest.mark.parametrize('mode', ['RGBA', 'P', 'LA'])
def test_alpha_and_palette_images_are_read_as_rgb_or_gray(tmp_path, mode):
    rgb = Image.fromarray(np.full((8, 8, 3), (174, 210, 216), np.uint8))     # a colour: mean and luma 200
    im = {'RGBA': rgb.convert('RGBA'), 'P': rgb.convert('P', palette=Image.Palette.ADAPTIVE),
          'LA': rgb.convert('L').convert('LA')}[mode]
    im.save(tmp_path / 'x.png')
    out = data.open_image(tmp_path / 'x.png')
    assert out.mode == ('L' if mode == 'LA' else 'RGB') and np.asarray(out).mean() == pytest.approx(200, abs=1)


@pytest.mark.parametrize('content', [b'', b'not an image at all'])
def test_unreadable_image_names_the_file(tmp_path, content):
    (tmp_path / 'bad.png').write_bytes(content)
    with pytest.raises(OSError, match='bad.png'):
        data.open_image(tmp_path / 'bad.png')


def _folder_with_a_truncated_image(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    whole = (folder / '3.png').read_bytes()
    (folder / '3.png').write_bytes(whole[:len(whole) // 2])
    return folder


def test_training_checks_the_folder_first_and_can_skip_bad_files(tmp_path):
    folder = _folder_with_a_truncated_image(tmp_path)
    argv = ['--preset', 'tiny', '--dataset', 'folder', '--data-dir', str(folder), '--image-size', '16',
            '--batch-size', '4', '--max-steps', '1', '--device', 'cpu']
    with pytest.raises(OSError, match=r'3\.png.*--skip-bad-images'):
        ti.main(ti.parse_args(argv + ['--out', str(tmp_path / 'a')]))
    with pytest.warns(UserWarning, match='3.png'):
        ti.main(ti.parse_args(argv + ['--out', str(tmp_path / 'b'), '--skip-bad-images']))
    assert ti.checkpoints(tmp_path / 'b' / 'checkpoints')


# ---- runs, resume and checkpoints ---------------------------------------------------------------

@pytest.fixture()
def tiny_run(tmp_path):
    out = tmp_path / 'run'
    ti.main(ti.parse_args(['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--max-steps', '4',
                           '--ckpt-every', '2', '--keep-ckpts', '0', '--device', 'cpu', '--out', str(out)]))
    return out


def test_training_refuses_a_used_folder_and_bad_resumes_change_nothing(tiny_run, tmp_path):
    before = snapshot(tiny_run)
    cases = [
        (['--out', str(tiny_run)], FileExistsError, '--resume'),
        (['--out', str(tiny_run), '--resume', str(tmp_path / 'elsewhere.pt')], FileNotFoundError, 'not one of'),
    ]
    for argv, error, message in cases:
        with pytest.raises(error, match=message):
            ti.main(ti.parse_args(['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--device', 'cpu']
                                  + argv))
        assert snapshot(tiny_run) == before
    (tmp_path / 'loose').mkdir()
    (tmp_path / 'loose' / 'config.json').write_text('{}')
    with pytest.raises(FileExistsError, match='--overwrite'):
        ti.main(ti.parse_args(['--preset', 'tiny', '--out', str(tmp_path / 'loose')]))
    assert snapshot(tmp_path / 'loose') == {'config.json': b'{}'}


def test_truncated_latest_checkpoint_points_to_resume_path_which_works(tiny_run):
    ckpts = ti.checkpoints(tiny_run / 'checkpoints')
    latest = Path(ckpts[4])
    latest.write_bytes(latest.read_bytes()[:500])
    base = ['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--device', 'cpu', '--max-steps', '6',
            '--ckpt-every', '2', '--keep-ckpts', '0', '--out', str(tiny_run)]
    with pytest.raises(RuntimeError, match='truncated.*--resume PATH'):
        ti.main(ti.parse_args(base + ['--resume']))
    ti.main(ti.parse_args(base + ['--resume', ckpts[2]]))
    after = ti.checkpoints(tiny_run / 'checkpoints')
    assert sorted(after) == [2, 4, 6]
    models.load_checkpoint(after[4])                                   # rewritten whole by the resumed run
    assert (tiny_run / 'checkpoints' / 'superseded_from_00000002' / 'ckpt_00000004.pt').is_file()


def test_text_file_as_checkpoint_is_not_called_cut_short(tmp_path):
    (tmp_path / 'notes.pt').write_text('hello')
    with pytest.raises(RuntimeError, match='not a PyTorch checkpoint'):
        models.load_checkpoint(tmp_path / 'notes.pt')


def test_ema_less_checkpoint_hint_is_a_flag_of_both_scripts(ckpt, tmp_path):
    for main, argv in [(sample.main, sample.build_parser().parse_args(['--ckpt', str(ckpt), '--out', str(tmp_path / 's')])),
                       (pnp.main, pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(ckpt), '--folder',
                                                                 str(tmp_path), '--out', str(tmp_path / 'p')]))]:
        with pytest.raises(KeyError, match='--no-ema in sample.py and pnp.py'):
            main(argv)


def test_cifar10_offline_says_where_to_put_the_archive(tmp_path, monkeypatch, ckpt):
    import urllib.error

    import torchvision

    def offline(*a, **k):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', offline)
    with pytest.raises(RuntimeError, match='cifar-10-python.tar.gz'):
        data.build_dataset('cifar10', str(tmp_path), 32)
    with pytest.raises(RuntimeError, match='cifar-10-python.tar.gz'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(ckpt), '--no-ema', '--dataset', 'cifar10',
                                                '--data-dir', str(tmp_path), '--out', str(tmp_path / 'o')]))
    assert not (tmp_path / 'o').exists()


def test_pnp_denoises_an_observed_noisy_image_without_sigma(ckpt, tmp_path):
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / 'noisy.png')
    pnp.main(pnp.build_parser().parse_args(['--task', 'denoise', '--ckpt', str(ckpt), '--no-ema', '--M', '1',
                                            '--observed', str(tmp_path / 'noisy.png'), '--out', str(tmp_path / 'o')]))
    assert (tmp_path / 'o' / 'restored' / 'noisy.png').is_file()
    with pytest.raises(ValueError, match='restored as they are'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'denoise', '--ckpt', str(ckpt), '--no-ema', '--sigma-y', '25',
                                                '--observed', str(tmp_path / 'noisy.png'), '--out', str(tmp_path / 'p')]))


# ---- trust, round two: no exit 0 with a wrong result, no run folder touched ----------------------

TINY = ['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--device', 'cpu']


def test_a_second_training_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / 'run'
    with ti.out_lock(str(out), master=True):                 # the first run holds the folder
        with pytest.raises(RuntimeError, match='in use by another training'):
            ti.main(ti.parse_args(TINY + ['--max-steps', '2', '--out', str(out)]))
        assert snapshot(out) == {}
    ti.main(ti.parse_args(TINY + ['--max-steps', '2', '--out', str(out)]))   # released: a run (or resume) starts
    assert ti.checkpoints(out / 'checkpoints')


def test_a_held_folder_names_the_process_that_holds_it_and_how_to_stop_it(tmp_path):
    """A worker left running by a torchrun launcher killed with SIGKILL keeps the folder's lock: the
    refusal names its pid and command line (read from /proc/locks) and says how to stop it."""
    import subprocess
    out = tmp_path / 'run'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); '
                               'fcntl.flock(fd, fcntl.LOCK_EX); print("held", flush=True); time.sleep(60)', str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(RuntimeError) as e:
            ti.main(ti.parse_args(TINY + ['--max-steps', '2', '--out', str(out)]))
        message = str(e.value)
        assert f'process {holder.pid} on ' in message and f'kill {holder.pid}' in message and 'fcntl' in message
        assert snapshot(out) == {}
    finally:
        holder.kill()
        holder.wait()


def test_resume_refuses_overwrite_and_a_max_steps_it_has_passed_before_any_write(tmp_path):
    out = tmp_path / 'run'
    ti.main(ti.parse_args(TINY + ['--max-steps', '4', '--ckpt-every', '2', '--out', str(out)]))
    before = {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}
    with pytest.raises(ValueError, match='give one of them'):
        ti.main(ti.parse_args(TINY + ['--max-steps', '6', '--resume', '--overwrite', '--out', str(out)]))
    for steps in ('2', '4'):                    # behind the run, or where it ended: nothing to train
        with pytest.raises(ValueError, match=f'at step 4, so --max-steps {steps} leaves nothing to train'):
            ti.main(ti.parse_args(TINY + ['--max-steps', steps, '--resume', '--out', str(out)]))
    assert {p: p.read_bytes() for p in out.rglob('*') if p.is_file()} == before      # config.json and log kept
    ti.main(ti.parse_args(TINY + ['--max-steps', '6', '--ckpt-every', '2', '--resume', '--out', str(out)]))
    assert max(ti.checkpoints(out / 'checkpoints')) == 6


@pytest.mark.parametrize('n', ['10001', '1'])
def test_metrics_floor_takes_at_most_the_test_split(n, monkeypatch, capsys):
    """The floor compares n training with n test images: there are 10,000 test images, so 10,001 was
    scored on 10,000 while it said 10,001."""
    import metrics
    monkeypatch.setattr(sys, 'argv', ['metrics.py', '--n', n])
    with pytest.raises(SystemExit) as e:
        metrics.main()
    assert e.value.code == 2 and '--n must lie in 2..10,000 (the Fashion-MNIST test images)' in capsys.readouterr().err


def test_weights_gone_non_finite_are_not_saved_although_the_losses_were_finite(tmp_path, monkeypatch):
    real_update = models.ema_update

    def poisoned(ema_params, params, decay):                # the EMA update turns G_ema to NaN
        real_update(ema_params, params, decay)
        ema_params[0].data.fill_(float('nan'))
    monkeypatch.setattr(ti.models, 'ema_update', poisoned)
    out = tmp_path / 'run'
    with pytest.raises(FloatingPointError, match=r'weight G_ema\.\S+ .*none \(none was written\)'):
        ti.main(ti.parse_args(TINY + ['--max-steps', '2', '--ckpt-every', '2', '--out', str(out)]))
    assert not ti.checkpoints(out / 'checkpoints')


@pytest.fixture()
def nan_ckpt(tmp_path):
    torch.manual_seed(0)
    G, _ = models.build_networks('tiny')
    state = G.state_dict()
    name = 'conv_in.weight' if 'conv_in.weight' in state else next(k for k, v in state.items() if v.is_floating_point())
    state[name][0].fill_(float('nan'))
    path = tmp_path / 'nan.pt'
    models.save_checkpoint(dict(format=models.CKPT_FORMAT, G_kwargs=dict(models.CONFIGS['tiny']['G']), D_kwargs=None,
                                meta=dict(META), G=state, G_ema=state), path)
    return path, name


def test_nan_weights_are_refused_by_sample_and_pnp_naming_the_tensor(nan_ckpt, tmp_path):
    path, name = nan_ckpt
    with pytest.raises(ValueError, match=f'non-finite weights: {name}'):
        sample.main(sample.build_parser().parse_args(['--ckpt', str(path), '--n', '2', '--out', str(tmp_path / 's')]))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / 'x.png')
    with pytest.raises(ValueError, match=f'non-finite weights: {name}'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(path), '--image', str(tmp_path / 'x.png'),
                                                '--out', str(tmp_path / 'p')]))
    assert not (tmp_path / 's').exists() and not (tmp_path / 'p').exists()


def test_fashion_folder_with_images_but_no_labels_is_refused(tmp_path):
    (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'\0' * 16)
    with pytest.raises(FileNotFoundError, match='train labels file'):
        data.FashionMNIST(str(tmp_path), train=True, download=False)


@pytest.mark.parametrize('argv, flag', [(['--net', 'tiny', '--dataset', 'fashion_mnist'], '1-channel images but --net tiny'),
                                        (['--net', 'fashion', '--dataset', 'fake'], '3-channel images but --net fashion')])
def test_a_network_of_the_wrong_channel_count_is_refused_before_any_file(argv, flag, tmp_path):
    out = tmp_path / 'run'
    with pytest.raises(ValueError, match=flag):
        ti.main(ti.parse_args(['--preset', 'tiny', '--device', 'cpu', *argv, '--out', str(out)]))
    assert not out.exists() or snapshot(out) == {}


@pytest.mark.parametrize('alpha', ['1e6', '0', '-0.5', '1.01'])
def test_pnp_alpha_outside_zero_one_fails_at_parsing(alpha, capsys):
    with pytest.raises(SystemExit):
        pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', 'x', '--folder', 'f', '--out', 'o', '--alpha', alpha])
    assert '(0, 1]' in capsys.readouterr().err


def test_pnp_tune_refuses_the_test_split_and_one_value_flags_take_one(capsys):
    with pytest.raises(ValueError, match='training split only'):
        pnp.check_args(pnp.build_parser().parse_args(['--tune', '--ckpt', 'x', '--dataset', 'fashion_mnist',
                                                      '--split', 'test']))
    with pytest.raises(ValueError, match='a grid of values only with --tune'):
        pnp.check_args(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', 'x', '--folder', 'f', '--out', 'o',
                                                      '--M', '5', '10']))


def test_pnp_tune_uses_the_j_it_is_given_and_checks_it_against_k(ckpt, monkeypatch):
    """--tune --J 9 used to tune at J = 1 and never compared J with the model's K."""
    common = ['--tune', '--ckpt', str(ckpt), '--no-ema', '--dataset', 'fashion_mnist', '--task', 'sr2', '--n', '2',
              '--M', '1', '--lam', '0.1', '--alpha', '0.5', '--device', 'cpu']
    loaded = []
    monkeypatch.setattr(pnp.data, 'load_images', lambda *a, **k: loaded.append(1) or
                        [(f'{i}', torch.rand(3, 32, 32) * 2 - 1) for i in range(2)])
    with pytest.raises(ValueError, match="--J 9 exceeds the checkpoint's K = 4"):
        pnp.main(pnp.build_parser().parse_args(common + ['--J', '9']))
    assert loaded == []                                             # refused before any image is read
    used = []
    real_drs = pnp.drs
    monkeypatch.setattr(pnp, 'drs', lambda *a, J=1, **k: used.append(J) or real_drs(*a, J=J, **k))
    best = pnp.main(pnp.build_parser().parse_args(common + ['--J', '2']))
    assert set(used) == {2} and best['sr2']['J'] == 2


def test_an_authors_file_without_authors_config_names_the_flag(tmp_path):
    torch.manual_seed(0)
    G, _ = models.build_networks('tiny')
    theirs = {f'all_modules.{i}.weight': torch.zeros(2) for i in range(3)}
    torch.save(theirs, tmp_path / 'netG_1200.pth')
    with pytest.raises(ValueError, match='--authors-config'):
        models.open_generator(str(tmp_path / 'netG_1200.pth'))


def test_exported_generator_is_small_fp16_and_samples_as_the_training_checkpoint(tmp_path):
    """The shipped-weights format: only G_ema (fp16), its arguments and meta; loads as fp32 and gives
    the training checkpoint's outputs to fp16 precision."""
    torch.manual_seed(0)
    G = models.NCSNpp(**models.CONFIGS['fashion']['G'])
    ckpt = dict(format=models.CKPT_FORMAT, G_kwargs=dict(models.CONFIGS['fashion']['G']), D_kwargs={}, meta=dict(
        META, channels=1, nz=G.nz), G=G.state_dict(), G_ema=G.state_dict(), D={'w': torch.ones(3)}, opt_G={}, step=7)
    models.save_checkpoint(ckpt, tmp_path / 'full.pt')
    models.export_generator(models.load_checkpoint(tmp_path / 'full.pt'), tmp_path / 'slim.pt', seconds_per_step=0.5)
    slim = torch.load(tmp_path / 'slim.pt', weights_only=True)
    assert set(slim) == {'format', 'G_kwargs', 'D_kwargs', 'meta', 'G_ema', 'step', 'exported', 'seconds_per_step'}
    assert slim['seconds_per_step'] == 0.5 and slim['step'] == 7
    assert all(v.dtype == torch.float16 for v in slim['G_ema'].values() if v.is_floating_point())
    assert (tmp_path / 'slim.pt').stat().st_size < 2 * 2**20
    G_slim, meta = models.load_generator(tmp_path / 'slim.pt')
    assert next(G_slim.parameters()).dtype == torch.float32 and meta['nz'] == G.nz
    x, k, z = torch.randn(2, 1, 32, 32), torch.tensor([0, 3]), torch.randn(2, G.nz)
    with torch.no_grad():
        torch.testing.assert_close(G_slim(x, k, z), G.eval()(x, k, z), rtol=0, atol=2e-2)
    with pytest.raises(KeyError, match='no generator weights'):
        models.load_generator(tmp_path / 'slim.pt', ema=False)


@pytest.mark.parametrize('argv, message', [
    (['--mmd-bandwidths', '0'], 'positive'), (['--mmd-bandwidths', 'nan'], 'positive'),
    (['--seed', str(2**64)], '2^63'), (['--seed', '-1'], '2^63')])
def test_training_flags_that_cannot_work_fail_at_parsing(argv, message, capsys):
    with pytest.raises(SystemExit):
        ti.parse_args(TINY + argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [(['--lr-min', '1', '--lr-tmax', '5'], '--lr-min 1 is above --lr-G'),
                                           (['--n-samples', '5000'], 'more than 1024')])
def test_training_settings_that_cannot_work_are_refused_before_any_file(argv, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ti.main(ti.parse_args(TINY + argv + ['--out', str(tmp_path / 'run')]))
    assert not (tmp_path / 'run').exists()


def test_idx_file_of_other_image_sizes_is_refused_naming_it(tmp_path):
    import gzip
    header = np.array([2051, 2, 30, 30], '>u4').tobytes()
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(header + bytes(2 * 30 * 30))
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(np.array([2049, 2], '>u4').tobytes() + bytes(2))
    with pytest.raises(ValueError, match=r'train-images-idx3-ubyte.gz holds 30x30 images'):
        data.FashionMNIST(str(tmp_path), train=True, download=False)


def test_a_folder_given_as_classifier_fails_before_training(tmp_path):
    import metrics
    with pytest.raises(ValueError, match='not a classifier file'):
        metrics.get_classifier(str(tmp_path), data_dir=str(tmp_path))


def test_pnp_names_the_file_of_an_odd_size(ckpt, tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / 'good.png')
    Image.fromarray(np.zeros((30, 31, 3), np.uint8)).save(tmp_path / 'odd.png')
    with pytest.raises(ValueError, match='odd: '):
        pnp.main(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(ckpt), '--no-ema', '--folder',
                                                str(tmp_path), '--out', str(tmp_path / 'p')]))
    assert not (tmp_path / 'p').exists()


def test_a_latent_too_large_to_allocate_names_the_flag_before_any_file(tmp_path):
    out = tmp_path / 'run'
    with pytest.raises(MemoryError, match='--nz 100000000000'):
        ti.main(ti.parse_args(TINY + ['--nz', str(10**11), '--out', str(out)]))
    assert not out.exists() or snapshot(out) == {}


# ---- one line for a refusal, a traceback for the unexpected ------------------------------------

SCRIPTS = [('sample.py', ['--ckpt', 'missing.pt'], "error: checkpoint 'missing.pt' does not exist"),
           ('train_images.py', ['--preset', 'tiny', '--resume', '--overwrite', '--out', 'r'], 'error: --resume continues'),
           ('pnp.py', ['--task', 'sr2', '--ckpt', 'x.pt', '--dataset', 'fashion_mnist'], 'error: --out is required'),
           ('bench/fashion_curves.py', ['--n', '5'], 'error: --n 5 / --ancestral-n 500'),
           ('bench/render.py', ['--check'], None)]


@pytest.mark.parametrize('script, argv, line', SCRIPTS, ids=[s for s, _, _ in SCRIPTS])
def test_a_refusal_is_one_line_without_a_traceback(script, argv, line, tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=120)
    if line is None:                                            # a script with nothing to refuse: exits 0
        assert out.returncode == 0, out.stderr
        return
    assert out.returncode == 1 and 'Traceback' not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(line) and len(out.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []                           # nothing written


def test_only_a_deliberate_raise_of_this_code_is_a_refusal():
    def ours():
        raise ValueError('--x must be positive')
    with pytest.raises(SystemExit, match='^error: --x must be positive$'):
        cli.run_main(ours)
    with pytest.raises(RuntimeError):                           # raised inside torch: the traceback stays
        cli.run_main(lambda: torch.zeros(2, 3) @ torch.zeros(2, 3))
    with pytest.raises(ZeroDivisionError):                      # an error, not a refusal
        cli.run_main(lambda: 1 / 0)
    def lacks():
        raise KeyError("the checkpoint lacks 'meta'")
    with pytest.raises(SystemExit, match="^error: the checkpoint lacks 'meta'$"):   # a KeyError's message, unquoted
        cli.run_main(lacks)
