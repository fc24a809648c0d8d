"""Check first, then work: a refusal comes before any sampling, training or file written, and names what
is wrong (the file, the line, the flag). Each case is a command that used to work for minutes and then fail,
or fail with a message about something else. Tiny networks and folders in tmp_path; nothing is downloaded."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import metrics
import models
import pnp
import sample
import toy2d
import train_images as ti

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module
import fashion_table as ft  # noqa: E402

META = dict(schedule='d', K=4, discretisation='original', posterior=False, nz=8, image_size=32, channels=3)
TINY = ['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--device', 'cpu']


def snapshot(folder):
    """{relative path: bytes} of every file under a folder."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def save_ckpt(path, meta=META, drop=(), **G_changes):
    """A tiny generator checkpoint (EMA weights only, as an exported file), without the keys in `drop`."""
    torch.manual_seed(0)
    G_kwargs = dict(models.CONFIGS['tiny']['G'], **G_changes)
    G = models.NCSNpp(**G_kwargs)
    ckpt = dict(format=models.CKPT_FORMAT, G_kwargs=G_kwargs, D_kwargs=None, meta=dict(meta), G_ema=G.state_dict(),
                step=1)
    models.save_checkpoint({k: v for k, v in ckpt.items() if k not in drop}, path)
    return path


def refuse_work(monkeypatch, module, name):
    """Make module.name fail the test if it is called: the work a refusal must come before."""
    def work(*a, **k):
        raise AssertionError(f'{name} ran before the refusal')
    monkeypatch.setattr(module, name, work)


@pytest.fixture()
def read_only(tmp_path):
    """An empty folder this process cannot write to: immutable for root (chattr +i), else mode 0555."""
    folder = tmp_path / 'read_only'
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which('chattr') is None or subprocess.run(['chattr', '+i', str(folder)]).returncode:
            pytest.skip('root cannot make a read-only folder here (no chattr)')
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(['chattr', '-i', str(folder)], check=True)
    folder.chmod(0o755)


# ---- sample.py --versus: the other checkpoint checked first, --n images of it ----------------------

def test_versus_draws_n_images_of_a_ddpm_not_64_and_says_so(tmp_path, monkeypatch, capsys):
    rgm = save_ckpt(tmp_path / 'rgm.pt')
    ddpm = save_ckpt(tmp_path / 'ddpm.pt', dict(META, prior='ddpm', K=20, nz=0), nz=0, out_tanh=False)
    drawn = []
    real_draw = sample.draw
    monkeypatch.setattr(sample, 'draw', lambda G, s, meta, shape, *a, **k: drawn.append((meta.get('prior'), shape[0]))
                        or real_draw(G, s, meta, shape, *a, **k))
    sample.main(sample.build_parser().parse_args(['--ckpt', str(rgm), '--versus', str(ddpm), '--n', '3',
                                                  '--batch-size', '3', '--device', 'cpu', '--out', str(tmp_path / 'o')]))
    assert drawn == [(None, 3), (None, 3), ('ddpm', 3)]          # samples, then versus.png: both models at --n
    assert 'versus.png: 3 images of DDPM (20 levels) (NFE 20)' in capsys.readouterr().out
    assert Image.open(tmp_path / 'o' / 'versus.png').size[0] > 0


@pytest.mark.parametrize('case', ['missing', 'channels'])
def test_a_bad_versus_checkpoint_is_refused_before_sampling(case, tmp_path, monkeypatch):
    rgm = save_ckpt(tmp_path / 'rgm.pt')
    other = tmp_path / 'other.pt'
    if case == 'channels':
        save_ckpt(other, dict(META, channels=1))
    refuse_work(monkeypatch, sample, 'generate')
    error, message = (FileNotFoundError, "'.*other.pt' does not exist") if case == 'missing' else \
        (ValueError, 'makes 1x32px images, this model 3x32px')
    with pytest.raises(error, match=message):
        sample.main(sample.build_parser().parse_args(['--ckpt', str(rgm), '--versus', str(other), '--n', '2',
                                                      '--device', 'cpu', '--out', str(tmp_path / 'o')]))
    assert not (tmp_path / 'o').exists()


# ---- --out: a folder that cannot be written, or a file, refused before the work ---------------------

def test_sample_and_toy_refuse_a_read_only_out_before_their_work(read_only, tmp_path, monkeypatch):
    rgm = save_ckpt(tmp_path / 'rgm.pt')
    refuse_work(monkeypatch, sample, 'generate')
    refuse_work(monkeypatch, toy2d, 'train_methods')
    for out, where in [(read_only, 'the folder is not writable'), (read_only / 'sub', 'the folder above it')]:
        with pytest.raises(PermissionError, match=where):
            sample.main(sample.build_parser().parse_args(['--ckpt', str(rgm), '--n', '2', '--device', 'cpu',
                                                          '--out', str(out)]))
        with pytest.raises(PermissionError, match=where):
            toy2d.main(toy2d.build_parser().parse_args(['--iters', '1', '--out', str(out)]))


def test_an_out_below_a_file_or_a_broken_link_is_refused(tmp_path):
    import cli
    (tmp_path / 'notes.txt').write_text('mine')
    (tmp_path / 'link').symlink_to(tmp_path / 'gone')
    for out, message in [(tmp_path / 'notes.txt' / 'run', "notes.txt' is a file, not a folder"),
                         (tmp_path / 'link', "link' is a broken link, not a folder"),
                         (tmp_path / 'link' / 'run', "cannot be made: '.*link' is a broken link")]:
        with pytest.raises(NotADirectoryError, match=message):
            cli.check_out_folder(str(out))
    cli.check_out_folder(str(tmp_path / 'new' / 'run'))         # to be made in a writable folder: fine


@pytest.mark.parametrize('out, error, message', [('/dev/full', NotADirectoryError, "'/dev/full' is a file, not a folder"),
                                                 (None, PermissionError, 'is not writable')])
def test_training_refuses_an_out_that_is_a_file_or_read_only(out, error, message, read_only):
    with pytest.raises(error, match=message):
        ti.main(ti.parse_args(TINY + ['--max-steps', '1', '--out', out or str(read_only)]))
    assert os.listdir(read_only) == []


# ---- train_images.py --resume: the log checked, the run's own settings ------------------------------

@pytest.fixture()
def tiny_run(tmp_path):
    out = tmp_path / 'run'
    ti.main(ti.parse_args(TINY + ['--max-steps', '4', '--ckpt-every', '2', '--keep-ckpts', '0', '--log-every', '1',
                                  '--out', str(out)]))
    return out


def test_a_damaged_log_line_stops_resume_before_anything_moves(tiny_run):
    log = tiny_run / 'log.jsonl'
    lines = log.read_text().splitlines(keepends=True)
    ckpt_2 = ti.checkpoints(tiny_run / 'checkpoints')[2]
    for damaged in ('{"step": 1, "loss_D": 0.6', '["step", 1]', '{"step": "1"}', '\udcff'):   # cut, not a record,
        lines[1] = damaged + '\n'                                                          # a text step, not UTF-8
        log.write_bytes(''.join(lines).encode('utf-8', 'surrogateescape'))
        before = snapshot(tiny_run)
        with pytest.raises(ValueError, match=r'log\.jsonl, line 2, is not a log record'):
            ti.main(ti.parse_args(TINY + ['--max-steps', '6', '--resume', ckpt_2, '--out', str(tiny_run)]))
        assert snapshot(tiny_run) == before                     # no checkpoint moved aside, config.json kept
    lines[1] = '{"step": 1}\n'
    log.write_text(''.join(lines) + '{"step": 5, "cut by a cra')      # a last line without newline: dropped
    ti.main(ti.parse_args(TINY + ['--max-steps', '6', '--resume', ckpt_2, '--out', str(tiny_run)]))
    steps = [json.loads(line).get('step') for line in log.read_text().splitlines()]
    assert steps == [0, 1, 2, 2, 3, 4, 5, 6]                   # kept to step 2, the resume record, steps 3..6


def test_resume_without_the_preset_continues_the_run_with_its_own_settings(tiny_run, tmp_path, monkeypatch):
    import torchvision
    monkeypatch.chdir(tmp_path)                                 # a data set looked for in ./data: not in the repository
    refuse_work(monkeypatch, torchvision.datasets, 'CIFAR10')  # the default data set: the run's preset was not used
    refuse_work(monkeypatch, torchvision.datasets, 'FashionMNIST')
    before = snapshot(tiny_run)
    with pytest.raises(ValueError, match='started with --preset tiny: drop --preset'):
        ti.main(ti.parse_args(['--preset', 'fashion_kld_d', '--resume', '--max-steps', '6', '--out', str(tiny_run)]))
    assert snapshot(tiny_run) == before
    ti.main(ti.parse_args(['--resume', '--max-steps', '6', '--device', 'cpu', '--out', str(tiny_run)]))
    config = json.loads((tiny_run / 'config.json').read_text())
    assert config['preset'] == 'tiny' and config['image_size'] == 16 and config['max_steps'] == 6
    assert max(ti.checkpoints(tiny_run / 'checkpoints')) == 6


@pytest.mark.parametrize('key', ['step', 'opt_D'])
def test_a_checkpoint_without_its_step_or_a_state_names_the_file_and_the_key(key, tiny_run):
    path = ti.checkpoints(tiny_run / 'checkpoints')[4]
    ckpt = torch.load(path, weights_only=True)
    del ckpt[key]                           # (an exported generator copied into checkpoints/ lacks both)
    models.save_checkpoint(ckpt, path)
    before = snapshot(tiny_run)
    with pytest.raises(RuntimeError, match=rf"ckpt_00000004\.pt' lacks '{key}', which --resume needs"):
        ti.main(ti.parse_args(TINY + ['--max-steps', '6', '--resume', '--out', str(tiny_run)]))
    assert snapshot(tiny_run) == before


@pytest.mark.parametrize('key', ['meta', 'G_kwargs'])
def test_a_generator_file_without_meta_or_arguments_names_the_file_and_the_key(key, tmp_path):
    path = save_ckpt(tmp_path / 'slim.pt', drop=(key,))
    with pytest.raises(ValueError, match=rf"slim\.pt' lacks '{key}'"):
        sample.main(sample.build_parser().parse_args(['--ckpt', str(path), '--device', 'cpu',
                                                      '--out', str(tmp_path / 'o')]))
    assert not (tmp_path / 'o').exists()


# ---- image folders: FIFOs, palettes, file names -----------------------------------------------------

def test_a_fifo_with_an_image_name_is_refused_not_read(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / 'a.png')
    os.mkfifo(folder / 'x.png')                                 # opening it would wait for a writer
    with pytest.raises(OSError, match=r'x\.png is not a regular file'):
        data.list_images(str(folder))
    with pytest.raises(OSError, match=r'x\.png is not a regular file'):
        data.build_dataset('folder', str(folder), 16)


@pytest.mark.parametrize('colour, mode, channels', [((90, 90, 90), 'L', 1), ((200, 90, 30), 'RGB', 3)])
def test_a_palette_image_of_grays_is_gray(colour, mode, channels, tmp_path):
    values = np.zeros((8, 8, 3), np.uint8)
    values[:4] = colour
    Image.fromarray(values).convert('P', palette=Image.Palette.ADAPTIVE).save(tmp_path / 'x.png')
    assert Image.open(tmp_path / 'x.png').mode == 'P'
    im = data.open_image(tmp_path / 'x.png')
    assert im.mode == mode and np.asarray(im.convert('RGB'))[:4].reshape(-1, 3).tolist() == [list(colour)] * 32
    assert data.to_model(im).shape == (channels, 8, 8)


def test_pnp_refuses_a_file_name_that_is_not_utf8_before_restoring(tmp_path):
    ckpt = save_ckpt(tmp_path / 'rgm.pt')
    folder = tmp_path / 'images'
    folder.mkdir()
    name = os.fsdecode(b'caf\xe9')
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / f'{name}.png')
    with pytest.raises(ValueError, match='not UTF-8'):
        pnp.main(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(ckpt), '--folder', str(folder), '--M', '1',
                                                '--device', 'cpu', '--out', str(tmp_path / 'o')]))
    assert not (tmp_path / 'o').exists()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / f'{name}.png')     # observed: no metrics.csv
    pnp.main(pnp.build_parser().parse_args(['--task', 'sr2', '--ckpt', str(ckpt), '--observed', str(folder / f'{name}.png'),
                                            '--M', '1', '--device', 'cpu', '--out', str(tmp_path / 'p')]))
    assert (tmp_path / 'p' / 'restored' / f'{name}.png').is_file()


# ---- the generator flags: a folder as --ckpt, --no-ema on an export --------------------------------

def test_a_folder_as_ckpt_is_called_a_folder_and_its_checkpoints_listed(tmp_path):
    run = tmp_path / 'run'
    save_ckpt(run / 'checkpoints' / 'ckpt_00000004.pt')
    (tmp_path / 'empty').mkdir()
    for folder, listing in [(run, r'give one of its files: checkpoints/ckpt_00000004\.pt'),
                            (tmp_path / 'empty', 'it holds no .pt or .pth file')]:
        with pytest.raises(IsADirectoryError, match=f'is a folder, not a file: {listing}'):
            sample.main(sample.build_parser().parse_args(['--ckpt', str(folder), '--out', str(tmp_path / 'o')]))
    assert not (tmp_path / 'o').exists()


def test_no_ema_on_an_exported_generator_names_the_flag_to_drop(tmp_path):
    path = save_ckpt(tmp_path / 'slim.pt')
    with pytest.raises(KeyError) as e:
        sample.main(sample.build_parser().parse_args(['--ckpt', str(path), '--no-ema', '--out', str(tmp_path / 'o')]))
    assert 'drop --no-ema' in str(e.value) and 'ema=' not in str(e.value)


def test_each_checkpoint_samples_into_its_own_default_folder(tmp_path):
    for name in ('a', 'b'):
        save_ckpt(tmp_path / f'{name}.pt')
        sample.main(sample.build_parser().parse_args(['--ckpt', str(tmp_path / f'{name}.pt'), '--n', '2',
                                                      '--device', 'cpu']))
    for name in ('a', 'b'):
        summary = json.loads((tmp_path / f'samples_{name}' / 'metrics.json').read_text())
        assert summary['ckpt'] == str(tmp_path / f'{name}.pt') and (tmp_path / f'samples_{name}' / 'samples.png').is_file()


# ---- the Fashion-MNIST classifier: a mistyped path is not ten minutes of training -------------------

def test_a_mistyped_classifier_is_refused_and_trained_only_when_asked(tmp_path, monkeypatch):
    refuse_work(monkeypatch, metrics, 'train_classifier')
    refuse_work(monkeypatch, metrics.data, 'FashionMNIST')
    typo = tmp_path / 'clasifier.pt'
    monkeypatch.setattr(sys, 'argv', ['metrics.py', '--classifier', str(typo), '--data-dir', str(tmp_path)])
    with pytest.raises(FileNotFoundError, match='clasifier.pt.* does not exist.*--train-classifier'):
        metrics.main()
    rgm = save_ckpt(tmp_path / 'rgm.pt', dict(META, dataset='fashion_mnist'))
    refuse_work(monkeypatch, sample, 'generate')
    with pytest.raises(FileNotFoundError, match='--train-classifier'):
        sample.main(sample.build_parser().parse_args(['--ckpt', str(rgm), '--classifier', str(typo), '--device', 'cpu',
                                                      '--out', str(tmp_path / 'o')]))
    assert not typo.exists() and not (tmp_path / 'o').exists()
    with pytest.raises(FileNotFoundError, match='--train-classifier'):      # on every rank, not only where prepare() runs
        metrics.Scores(dict(META, dataset='fashion_mnist'), 2, classifier=str(typo))
    metrics.Scores(dict(META, dataset='fashion_mnist'), 2, classifier=str(typo), fashion=False)    # --no-fd: not needed
    monkeypatch.setattr(metrics, 'train_classifier', lambda *a, **k: (metrics.Classifier(), 0.5))
    monkeypatch.setattr(metrics.data, 'FashionMNIST', lambda *a, **k: None)
    assert metrics.get_classifier(str(typo), str(tmp_path), train=True)[1:] == (0.5, True)
    assert metrics.load_classifier(str(typo))[1] == 0.5


# ---- bench/fashion_table.py --shipped: a missing generator file is named, not trained --------------

def table_args(**changes):
    """The flags of `fashion_table.py --shipped --dry-run --rows kld_d mmse_d --n 100`, with changes."""
    return argparse.Namespace(**{**dict(ship=False, root='r', rows=['kld_d', 'mmse_d'], n=100, nfe_n=100, shipped=True,
                                        samplers=list(ft.SAMPLERS), jobs=1, pnp=False, pnp_n=10, dry_run=True,
                                        train_only=False, classifier=metrics.DEFAULT_CLASSIFIER, data_dir='data',
                                        threads=0), **changes})


def test_fashion_table_shipped_refuses_a_missing_generator_file(tmp_path, monkeypatch, capsys):
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'fashion_kld_d.pt').write_bytes(b'')
    monkeypatch.setattr(ft, 'ROOT', tmp_path)
    root = str(tmp_path / 'table')
    with pytest.raises(FileNotFoundError, match=r'checkpoints/fashion_mmse_d\.pt \(mmse_d\) missing'):
        ft.main(table_args(root=root))
    assert 'train' not in capsys.readouterr().out               # refused before the plan is printed
    (tmp_path / 'checkpoints' / 'fashion_mmse_d.pt').write_bytes(b'')
    ft.main(table_args(root=root))
    assert 'shipped weights' in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match='--train-classifier'):
        ft.main(table_args(root=root, classifier=str(tmp_path / 'typo.pt')))
