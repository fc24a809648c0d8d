"""The benchmarks' roofline arithmetic (bench/common.py): the flop count against closed forms, through
a step that takes gradients inside itself as the RGM step does (R1), and the training-step benchmark's
GFLOP per step against its parts."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module
import common  # noqa: E402


def test_flops_of_a_convolution_and_a_matrix_product_are_the_closed_forms():
    B, C, O, H, W = 4, 3, 5, 8, 6
    conv, x = torch.nn.Conv2d(C, O, 3, padding=1, bias=False), torch.randn(B, C, H, W, requires_grad=True)
    forward = 2 * B * O * C * 9 * H * W                                 # a multiply and an add per tap
    assert common.count_flops(lambda: conv(x)) == forward
    # backward: the gradient of the input and of the weight, each a convolution of the same size
    assert common.count_flops(lambda: conv(x).sum().backward()) == 3 * forward
    a, b = torch.randn(7, 11), torch.randn(11, 13)
    assert common.count_flops(lambda: a @ b) == 2 * 7 * 11 * 13
    assert common.count_flops(lambda: (a + 1).relu()) == 0             # element-wise work is not counted


def test_a_gradient_penalty_inside_the_counted_call_is_counted():
    """R1 differentiates D's output with respect to its input inside the step (create_graph), then the
    penalty is differentiated again: torch's FlopCounterMode fails on such steps (its module tracker);
    the count here holds the forward, the gradient with its graph and the second backward."""
    conv, x = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False), torch.randn(1, 2, 4, 4, requires_grad=True)

    def step():
        grad, = torch.autograd.grad(conv(x).sum(), x, create_graph=True)
        grad.pow(2).sum().backward()
    forward = 2 * 2 * 2 * 9 * 16
    assert common.count_flops(step) >= 3 * forward


def test_the_peak_is_a_positive_rate_in_each_precision_and_layout():
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            assert common.conv_peak('cpu', dtype, shape=(2, 8, 8, 8), reps=2, channels_last=channels_last) > 0


def test_train_step_bench_counts_a_step_as_its_plain_and_r1_steps_weigh():
    import train_step
    r = train_step.bench('tiny', 'cpu', False, 'eager', 8, warmup=1, steps=2, threads=1)
    assert r['gflop'] > 0 and r['batch'] == 8
    # more images, proportionally more arithmetic (the tiny net's layers all scale with the batch)
    r16 = train_step.bench('tiny', 'cpu', False, 'eager', 16, warmup=1, steps=2, threads=1)
    assert r16['gflop'] == pytest.approx(2 * r['gflop'], rel=1e-6)


def test_the_gpu_report_quotes_a_worker_traceback_down_to_its_error_line():
    """A torchrun worker's traceback is long (rank prefixes, '^^^' marks) and the launcher prints its own
    summary after it: the report keeps the first traceback's start and, above all, its error line."""
    import gpu_report
    frames = [f'[rank0]:   File "x.py", line {i}, in f{i}\n[rank0]:     f{i + 1}()\n[rank0]:     ^^^^^^^^' for i in range(30)]
    text = '\n'.join(['0%| | 0/200 [rank0]: Traceback (most recent call last):', *frames,
                      '[rank0]: RuntimeError: the cause', 'E1204 launcher: failed', 'Traceback (most recent call last):',
                      '  File "run.py", line 1', 'ChildFailedError: the summary'])
    quoted = gpu_report.first_traceback(text).splitlines()
    assert len(quoted) <= 25 and 'Traceback' in quoted[0] and quoted[-1] == '[rank0]: RuntimeError: the cause'
    assert gpu_report.first_traceback('no traceback\nlast line') == 'no traceback\nlast line'


def test_each_sampling_mode_runs_the_same_network():
    """bench/sampling.py's modes: NHWC the same outputs to fp32 rounding, bf16 to bfloat16's (8 bits of
    mantissa: 1e-2 relative), float32 out; the original generator is left as it was."""
    import models
    import sampling
    torch.manual_seed(0)
    G = models.NCSNpp(**models.CONFIGS['tiny']['G']).eval()
    with torch.no_grad():
        for p in G.parameters():
            p += 0.02 * torch.randn(p.shape)
        x, k, z = torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), torch.randn(2, models.CONFIGS['tiny']['G']['nz'])
        plain = G(x, k, z)
        nhwc, bf16 = (sampling.variant(G, mode)(x, k, z) for mode in ('channels_last', 'bf16'))
    assert sampling.variant(G, 'eager') is G and next(G.parameters()).dtype == torch.float32
    assert (nhwc - plain).abs().max() < 1e-5 and bf16.dtype == torch.float32
    scale = plain.abs().max()
    assert 1e-6 * scale < (bf16 - plain).abs().max() < 5e-2 * scale


def test_the_profile_names_the_costliest_operators_of_a_step():
    """--profile: shares of the self time, largest first, summing to at most 1; a convolution among them
    (the networks are mostly convolutions)."""
    import train_step
    top = train_step.bench('tiny', 'cpu', False, 'eager', 4, warmup=1, steps=1, threads=1, profile=2)['profile']
    shares = [share for _, share in top]
    assert len(top) == 8 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert any('convolution' in name for name, _ in top)
