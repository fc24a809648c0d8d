"""The life of a training run's folder (--out), apart from the RGM update that train_images.py holds:

    RunDir          config.json, log.jsonl, samples/ and checkpoints/ (ckpt_<step>.pt, written atomically
                    by models.save_checkpoint); which checkpoint a run starts from (the --resume and
                    --overwrite rule); the log cut back to the checkpoint on resume; later checkpoints
                    moved aside when --resume PATH goes back
    checkpoints     {step: path} of a checkpoint folder
    out_lock        one training per folder at a time (an flock held while the run lasts), and who holds
                    it when a second one is refused (lock_holder)
"""
import contextlib
import fcntl
import glob
import json
import os
import re

import cli
import models

RUN_FILES = ('config.json', 'log.jsonl', 'samples', 'checkpoints')     # what a run writes in --out


def checkpoints(folder):
    """{step: path} of the checkpoints in a run's checkpoint folder."""
    found = {}
    for path in glob.glob(os.path.join(folder, 'ckpt_*.pt')):
        match = re.fullmatch(r'ckpt_(\d+)\.pt', os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    return found


class RunDir:
    """The run directory --out: config.json, log.jsonl, samples/, checkpoints/ (ckpt_<step>.pt)."""

    def __init__(self, out):
        self.out, self.ckpt_dir = out, os.path.join(out, 'checkpoints')
        self.log_path = os.path.join(out, 'log.jsonl')

    def checkpoints(self):
        return checkpoints(self.ckpt_dir)

    def latest(self):
        found = self.checkpoints()
        return found[max(found)] if found else None

    def choose_start(self, resume, overwrite, restarted, master):
        """The checkpoint to resume from (None: a new run); a used --out is refused unless --resume or
        --overwrite (a worker restarted by torchrun resumes by itself)."""
        found = self.checkpoints()
        if not (resume or restarted):
            if found and not overwrite:
                raise FileExistsError(f'{self.out} already holds checkpoints: pass --resume to continue that run, '
                                      '--overwrite to start over in it, or choose another --out')
            cli.prepare_out(self.out, RUN_FILES, overwrite, 'training run', remove=False)    # removed in begin()
            return None
        if not found:
            raise FileNotFoundError(f'--resume: no checkpoint under {self.ckpt_dir}')
        self.records()                                  # a damaged log stops the resume before any change
        if resume in (None, 'latest') or restarted:
            return found[max(found)]
        if os.path.realpath(resume) not in {os.path.realpath(p) for p in found.values()}:  # --resume PATH
            raise FileNotFoundError(f'--resume {resume}: not one of the checkpoints of {self.out} '
                                    f'({", ".join(sorted(os.path.basename(p) for p in found.values()))})')
        return resume

    def begin(self, start_step, record, config, overwrite):
        """Rank 0, once everything is checked and loaded: an --overwrite run's old files removed, the
        folders, config.json, and log.jsonl cut back to the checkpoint's step with a start/resume
        record; later checkpoints of a --resume PATH move aside."""
        if not start_step:
            cli.prepare_out(self.out, RUN_FILES, overwrite, 'training run')
        os.makedirs(os.path.join(self.out, 'samples'), exist_ok=True)
        os.makedirs(self.ckpt_dir, exist_ok=True)
        for tmp in glob.glob(os.path.join(self.ckpt_dir, '.tmp-*')):      # left by a save that was killed
            os.remove(tmp)
        newer = [path for step, path in self.checkpoints().items() if start_step and step > start_step]
        if newer:               # --resume PATH went back: keep the later checkpoints aside, not in the way
            aside = os.path.join(self.ckpt_dir, f'superseded_from_{start_step:08d}')
            os.makedirs(aside, exist_ok=True)
            for path in newer:
                os.replace(path, os.path.join(aside, os.path.basename(path)))
            print(f'--resume: moved {len(newer)} later checkpoint(s) to {aside}')
        with open(os.path.join(self.out, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2)
        kept = [line for line, r in self.records() if r.get('step', 0) <= start_step] if start_step else []
        with open(self.log_path, 'wb') as f:            # the records up to the checkpoint
            f.writelines(kept)
        self.log(record)

    def config(self):
        """The settings the run was started with (config.json), or None when no run is there."""
        path = os.path.join(self.out, 'config.json')
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                config = json.load(f)
        except ValueError as e:
            raise ValueError(f'{path} cannot be read ({e}): --resume takes the run\'s settings from it') from None
        if not isinstance(config, dict):
            raise ValueError(f'{path} holds no settings (a JSON {type(config).__name__}): --resume takes the run\'s '
                             'settings from it')
        return config

    def records(self):
        """[(line, record)] of log.jsonl, each line checked: one that is not a JSON record stops with the
        file and line named. A last line without its newline was cut by a crash, past any checkpoint: left out."""
        if not os.path.exists(self.log_path):
            return []
        out = []
        with open(self.log_path, 'rb') as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b'\n'):
                    break
                try:
                    record = json.loads(line)
                except ValueError:                      # not JSON, or not UTF-8
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get('step', 0), (int, float)):
                    raise ValueError(f'{self.log_path}, line {number}, is not a log record ({line[:80]!r}): '
                                     'repair or delete that line, then --resume again (nothing was changed)')
                out.append((line, record))
        return out

    def log(self, record):
        with open(self.log_path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def save(self, ckpt, step, keep):
        """Write ckpt_<step>.pt atomically (models.save_checkpoint) and keep the latest `keep` (0: all)."""
        models.save_checkpoint(ckpt, os.path.join(self.ckpt_dir, f'ckpt_{step:08d}.pt'))
        found = self.checkpoints()
        for old in sorted(found)[:-keep] if keep > 0 else []:
            os.remove(found[old])


@contextlib.contextmanager
def out_lock(out, master):
    """On rank 0, an exclusive lock (flock) on the run directory while the run lasts: a second training
    started into the same --out is refused. The system drops the lock when the process ends, even by a
    crash or a kill, so a torchrun restart or a later --resume takes it again. Other ranks: no lock."""
    if not master:
        yield
        return
    cli.check_out_folder(out)               # a file named as --out, or a folder this user cannot write to
    os.makedirs(out, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f'--out {out!r} is in use by another training: {lock_holder(out)}') from None
        yield
    finally:
        os.close(fd)


def lock_holder(out):
    """Who holds the flock of folder `out`, and how to stop it: the process (pid, command) read from
    /proc/locks on this machine, or a line saying it is not visible here. A torchrun launcher killed by
    SIGKILL leaves its workers running (each in a session of its own), still holding the lock."""
    st = os.stat(out)
    key = f'{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}'
    try:
        with open('/proc/locks') as f:
            pids = [int(line.split()[4]) for line in f if line.split()[1:2] == ['FLOCK'] and line.split()[5] == key]
    except (OSError, IndexError, ValueError):
        pids = []
    if not pids:
        return ('its lock is held by a process not visible here (another machine sharing this folder?): wait '
                'for that run to end, or choose another --out')
    pid = pids[0]
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            command = f.read().replace(b'\0', b' ').decode(errors='replace').strip()
    except OSError:
        command = '?'
    return (f'process {pid} on {os.uname().nodename} holds its lock ({command[:200]}). Wait for it to end, or, '
            f'if its launcher is gone (torchrun killed by SIGKILL leaves its workers running), stop it and the '
            f'other ranks of that run: kill {pid}; pgrep -af train_images.py lists them. Then --resume')
