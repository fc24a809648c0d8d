"""A two-node torchrun restart on one machine: two agents (`--nnodes 2`, node ranks 0 and 1, c10d
rendezvous on 127.0.0.1, one gloo process each, `--max-restarts 1`) train the tiny preset; once
the first checkpoint is written, node 1's worker is SIGKILLed. torchrun restarts the workers of
both nodes, which must resume from the latest checkpoint by themselves and finish. Prints a
markdown report: each agent's exit status, the start/resume events of log.jsonl, the step records,
and the tail of the agents' output when something failed.

    python bench/multinode.py                       # exports TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    python bench/multinode.py --share-store         # leave torchrun's shared store on (refused by
                                                    # train_images.py over several nodes)

About two minutes on a busy 2-core CPU; nothing is left behind unless --keep. With the c10d
rendezvous torchrun ignores --node-rank (it says so) and gives the ranks itself. The surviving
worker fails too (gloo: "Connection reset by peer") and is restarted with the killed one.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import child_pids

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import cli  # noqa: E402  (the project's argument types)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def checkpoint_steps(out):
    return sorted(int(p.stem.split('_')[1]) for p in (out / 'checkpoints').glob('ckpt_*.pt'))


def tail(path, lines=25):
    text = path.read_text(errors='replace').splitlines() if path.exists() else []
    return '\n'.join(text[-lines:])


def main(args):
    work = Path(tempfile.mkdtemp(prefix='rgm_multinode_'))
    out, port = work / 'run', free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    if not args.share_store:
        env['TORCH_DISABLE_SHARE_RDZV_TCP_STORE'] = '1'
    else:
        env.pop('TORCH_DISABLE_SHARE_RDZV_TCP_STORE', None)
    train = ['train_images.py', '--preset', 'tiny', '--device', 'cpu', '--max-steps', str(args.max_steps),
             '--ckpt-every', str(args.ckpt_every), '--log-every', '1', '--threads', '1', '--out', str(out)]
    agents = []
    for node in (0, 1):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node-rank', str(node),
               '--nproc-per-node', '1', '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}',
               '--rdzv-id', 'rgm_multinode', '--max-restarts', '1', *train]
        log = work / f'node{node}.log'
        agents.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open('w'), stderr=subprocess.STDOUT), log))
    start, killed, problems = time.time(), None, []
    try:
        while not checkpoint_steps(out) and all(p.poll() is None for p, _ in agents):
            if time.time() - start > args.timeout:
                problems.append(f'no checkpoint within {args.timeout} s')
                break
            time.sleep(0.05)
        first = checkpoint_steps(out)
        workers = child_pids(agents[1][0].pid, b'RANK=') if agents[1][0].poll() is None else []
        if first and workers:
            killed = (first[0], workers)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        elif not problems:
            problems.append(f'nothing to kill: checkpoints {first}, node 1 workers {workers}, '
                            f'agent exit codes {[p.poll() for p, _ in agents]}')
        for p, _ in agents:
            try:
                p.wait(timeout=max(1, args.timeout - (time.time() - start)))
            except subprocess.TimeoutExpired:
                problems.append(f'agent {p.pid} still running after {args.timeout} s: killed')
                p.kill()
                p.wait()
    finally:
        for p, _ in agents:
            if p.poll() is None:
                p.kill()
    seconds = time.time() - start

    records = []
    if (out / 'log.jsonl').exists():
        records = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines() if line.strip()]
    events = [r for r in records if 'event' in r]
    steps = [r['step'] for r in records if 'event' not in r]
    resumed = [e for e in events if e['event'] == 'resume']
    final = checkpoint_steps(out)
    codes = [p.returncode for p, _ in agents]
    if codes != [0, 0]:
        problems.append(f'agent exit codes {codes}')
    if not (killed and resumed and resumed[-1]['step'] >= killed[0] and resumed[-1]['restart'] >= 1):
        problems.append('no resume event after the kill from a checkpoint at or after the first')
    if steps != list(range(1, args.max_steps + 1)):
        problems.append(f'step records {steps}, not 1..{args.max_steps}')
    if not final or final[-1] != args.max_steps:
        problems.append(f'final checkpoints {final}, none at step {args.max_steps}')

    import torch
    print(f'## Two-node torchrun restart (one machine, gloo, torch {torch.__version__}, '
          f'TORCH_DISABLE_SHARE_RDZV_TCP_STORE={env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "unset")})\n')
    print(f'**{"PASS" if not problems else "FAIL"}** in {seconds:.0f} s'
          + ('' if not problems else ': ' + '; '.join(problems)) + '\n')
    print('| what | value |\n|---|---|')
    print(f'| killed | node 1 worker(s) {killed[1] if killed else "-"} after the checkpoint at step '
          f'{killed[0] if killed else "-"} |')
    print(f'| agent exit codes (node 0, node 1) | {codes} |')
    for e in events:
        print(f'| log event | {e["event"]} at step {e["step"]}, world size {e["world_size"]}, restart {e["restart"]}, '
              f'checkpoint {os.path.basename(e["checkpoint"] or "") or "-"} |')
    print(f'| step records | {steps[0] if steps else "-"}..{steps[-1] if steps else "-"} ({len(steps)}) |')
    print(f'| checkpoints at the end | {final} |')
    if problems:
        for node, (_, log) in enumerate(agents):
            print(f'\n### node {node}: last lines of its output\n\n```\n{tail(log)}\n```')
    if args.keep:
        print(f'\nfiles kept in {work}')
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--max-steps', type=cli.positive_int, default=12)
    p.add_argument('--ckpt-every', type=cli.positive_int, default=4)
    p.add_argument('--timeout', type=cli.positive_float, default=200, help='seconds for the whole run')
    p.add_argument('--share-store', action='store_true',
                   help='do not export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (train_images.py then refuses)')
    p.add_argument('--keep', action='store_true', help='keep the run folder and the agents\' logs')
    sys.exit(cli.run_main(main, p.parse_args()))
