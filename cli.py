"""The command-line pieces every script shares, declared once.

    argument types      counts and scales that cannot be zero or negative fail at parsing
    prepare_out         the one rule for an output folder (--out, --overwrite), writable (check_out_folder)
    write_json          JSON that standard parsers read (no NaN, no Infinity)
    generator flags     --ckpt, --no-ema and the flags of the authors' generator files, and their loader
    init_distributed    torchrun's process group (NCCL on GPUs, gloo on CPUs)
    DEFAULT_DEVICE      cuda when torch sees a GPU, else cpu: the --device default of every script
"""
import argparse
import datetime
import glob
import json
import math
import os
import shutil
import sys
import traceback

import torch
import torch.distributed as dist

import models
import schedules

DEFAULT_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


# ----------------------------------------------------------------------------
# argparse types.

def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return value


def nonnegative_float(text):
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value


def seed(text):
    """A random seed: an integer in 0 .. 2^63 - 1 (what torch.manual_seed takes)."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f'must be an integer in 0 .. 2^63 - 1, got {text}')
    return value


def fraction(text):
    """A share in [0, 1] (the toy's --lr-decay)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'must be in [0, 1], got {text}')
    return value


def decay_rate(text):
    """An EMA decay in [0, 1): 1 would never move the average."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f'must be in [0, 1), got {text}')
    return value


# ----------------------------------------------------------------------------
# Output folders and files.

def prepare_out(out, owned, overwrite, what='output', remove=True):
    """The rule for every script's --out: a missing or empty folder is used as is. A folder that already
    holds files is refused (before anything is written) unless `overwrite`; then the entries this
    script writes (`owned`: names or glob patterns) are removed, so no file of the earlier run is left
    beside the new ones; files the script does not write are kept. With remove=False only the check
    runs (scripts call it so before their work, and again with remove=True just before writing)."""
    check_out_folder(out)
    if not os.path.isdir(out):
        return
    if not os.listdir(out):
        return
    if not overwrite:
        raise FileExistsError(f'--out {out!r} already holds files (an earlier {what}?): pass --overwrite to '
                              'replace that run\'s outputs, or choose another --out')
    for pattern in owned if remove else ():
        for path in glob.glob(os.path.join(glob.escape(out), pattern)):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def check_out_folder(out):
    """--out can be made and written to: a file in its place, or a folder (or the nearest existing folder
    above it) that this user cannot write to (read-only, another user's), is refused before any work."""
    kind = lambda path: 'a broken link' if not os.path.exists(path) else 'a file'       # noqa: E731
    if os.path.lexists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f'--out {out!r} is {kind(out)}, not a folder')
    nearest = os.path.abspath(out)
    while not os.path.lexists(nearest):                 # where --out will be made
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise NotADirectoryError(f'--out {out!r} cannot be made: {nearest!r} is {kind(nearest)}, not a folder')
    if not os.access(nearest, os.W_OK | os.X_OK):
        where = 'the folder' if nearest == os.path.abspath(out) else f'the folder above it, {nearest!r},'
        raise PermissionError(f'--out {out!r}: {where} is not writable (read-only, or another user\'s): '
                              'choose another --out')


def deliberate(e):
    """Whether exception e was raised on purpose by this project's code: its last frame is a `raise`
    statement in a file of this repository (an error raised inside torch, numpy or C code is not)."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    here = os.path.dirname(os.path.abspath(__file__))
    return (os.path.abspath(last.filename).startswith(here + os.sep) and 'site-packages' not in last.filename
            and (last.line or '').lstrip().startswith('raise '))


def run_main(main, *args):
    """A script's entry point: main(*args), where a refusal the code raises on purpose (`deliberate`: a bad
    argument, a missing or incompatible file, a used folder, a non-finite loss) prints `error: <message>`
    on one line and exits 1, and any other exception keeps its traceback."""
    try:
        return main(*args)
    except Exception as e:                                          # noqa: BLE001 - re-raised unless deliberate
        if not deliberate(e):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.exit(f'error: {message}')


def finite_or_none(obj):
    """obj with every non-finite float (a PSNR of identical images, a NaN) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def provenance(script):
    """What a results file says of its making: the command line (`script` and this process's arguments,
    the home folder as ~), today's date and the machine."""
    import platform
    command = ' '.join(['python', script, *sys.argv[1:]]).replace(os.path.expanduser('~'), '~')
    return dict(command=command, date=datetime.date.today().isoformat(),
                machine=f'{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}')


def write_json(path, obj):
    """JSON that standard parsers read: non-finite floats become null (never NaN or Infinity)."""
    with open(path, 'w') as f:
        json.dump(finite_or_none(obj), f, indent=2, allow_nan=False)
        f.write('\n')


# ----------------------------------------------------------------------------
# The generator-loading flags of sample.py and pnp.py, and their loader.

def add_generator_args(parser):
    """--ckpt, --no-ema, and --authors-config with the forward process the authors' files do not record."""
    g = parser.add_argument_group('generator')
    g.add_argument('--ckpt', required=True, help="our checkpoint, or the authors' netG_*.pth with --authors-config")
    g.add_argument('--no-ema', action='store_true', help='use the raw generator weights instead of the EMA ones')
    g.add_argument('--authors-config', choices=sorted(models.CONFIGS), help="read --ckpt as the authors' generator "
                   'of this configuration')
    g.add_argument('--schedule', choices=sorted(schedules.SCHEDULES), help='with --authors-config (default d)')
    g.add_argument('--K', type=positive_int, help='with --authors-config: levels it was trained with (default 4)')
    g.add_argument('--discretisation', choices=['original', 'square', 'geometric'],
                   help='with --authors-config (default original)')
    return g


def load_generator(args, device):
    """(G in eval mode, meta) from the flags of add_generator_args: see models.open_generator."""
    return models.open_generator(args.ckpt, device, not args.no_ema, args.authors_config, args.schedule, args.K,
                                 args.discretisation)


# ----------------------------------------------------------------------------
# Distributed set-up under torchrun.

def init_distributed(device, timeout=None):
    """(rank, world size, device): (0, 1, device) without torchrun; under torchrun (RANK in the
    environment) one process per device joins the process group, NCCL on GPUs and gloo on CPUs.
    `timeout` (a timedelta) for collectives that wait long, such as sample.py's reference statistics."""
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError(f'--device {device}, but torch sees no GPU: use --device cpu')
    if 'RANK' not in os.environ:
        return 0, 1, device
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    options = {} if timeout is None else dict(timeout=timeout)
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        options['device_id'] = device
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True' and int(os.environ.get('TORCHELASTIC_MAX_RESTARTS', 0)):
        # torchrun's shared store keeps the addresses of the previous attempt, which restarted workers
        # then fail to reach (PyTorch issue 135712): give each attempt its own keys. The attempt number
        # is consistent only within one node.
        if int(os.environ['LOCAL_WORLD_SIZE']) != world_size:
            raise RuntimeError('torchrun --max-restarts over several nodes: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 '
                               'before torchrun, else restarted workers cannot connect (PyTorch issue 135712)')
        store, _, _ = next(dist.rendezvous('env://'))
        attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
        options.update(store=dist.PrefixStore(f'rgm/attempt_{attempt}', store), rank=rank, world_size=world_size)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', **options)
    return rank, world_size, device


LONG_TIMEOUT = datetime.timedelta(hours=2)
