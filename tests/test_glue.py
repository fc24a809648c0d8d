"""The glue between the numerical cores: each test here fails for a one-line change of the code it
names (a mutant that the rest of the suite let through)."""
import json
import sys
from pathlib import Path

import pytest
import torch

import models
import sample
import train_images as ti
from schedules import make_schedule, sample_ddpm

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module


def test_ancestral_sampling_adds_its_posterior_noise_down_to_level_one():
    """K = 2, data a point mass at 0, the exact noise predictor eps = x_t / sigmabar_t: x0_hat = 0, and the
    exact reverse chain passes through the forward marginals, so x_1 ~ q(x_1 | x0 = 0) = N(0, sigmabar_1^2)
    (independent of the posterior coefficients the sampler uses). Without the posterior noise at level 1,
    Var x_1 would be c2_1^2 < sigmabar_1^2."""
    s = make_schedule('d', K=2)
    eps = lambda x, k, z: x / s.std(k + 1).view(-1, 1)             # noqa: E731   the net sees x_{k+1}
    xs = sample_ddpm(eps, s, (40_000, 2), generator=torch.Generator().manual_seed(0), trajectory=True)
    marginal = s.std(torch.tensor([1])).item() ** 2                 # sigmabar_1^2 of the forward process
    _, c2, _ = (float(c) for c in s.posterior_coefficients(1))
    assert marginal - c2 ** 2 > 0.1 * marginal                      # the two answers are far apart
    assert abs(xs[1].var().item() - marginal) < 0.03 * marginal     # Monte Carlo: 80,000 values
    assert xs[2].abs().max() < 1e-6                                 # x_0 = x0_hat = 0: no noise at the last step


def test_export_refuses_a_non_finite_ema_generator_and_only_that_one(tmp_path):
    torch.manual_seed(0)
    G, _ = models.build_networks('tiny')
    good = {k: v.clone() for k, v in G.state_dict().items()}
    bad = {k: v.clone() for k, v in good.items()}
    next(v for v in bad.values() if v.is_floating_point()).view(-1)[0] = float('nan')
    ckpt = dict(format=models.CKPT_FORMAT, G_kwargs=dict(models.CONFIGS['tiny']['G']), meta={}, step=1)
    with pytest.raises(Exception, match='EMA generator'):
        models.export_generator(dict(ckpt, G=good, G_ema=bad), tmp_path / 'a.pt')
    assert not (tmp_path / 'a.pt').exists()
    models.export_generator(dict(ckpt, G=bad, G_ema=good), tmp_path / 'b.pt')     # the raw G is not exported
    assert (tmp_path / 'b.pt').is_file()


def test_the_latest_checkpoint_is_the_highest_step(tmp_path):
    folder = tmp_path / 'checkpoints'
    folder.mkdir()
    for step in (2, 10, 4):
        (folder / f'ckpt_{step:08d}.pt').write_bytes(b'')
    assert Path(ti.RunDir(str(tmp_path)).latest()).name == 'ckpt_00000010.pt'


def test_ddim_samples_depend_on_the_seed_alone_not_on_the_global_rng():
    torch.manual_seed(0)
    G = models.NCSNpp(**dict(models.CONFIGS['tiny']['G'], nz=0, out_tanh=False)).eval()
    meta = dict(prior='ddpm', channels=3, image_size=models.CONFIGS['tiny']['G']['image_size'], nz=0, posterior=False)
    s = make_schedule('d', K=10)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(sample.generate(G, s, meta, 3, batch_size=2, seed=5, steps=4))
    assert torch.equal(*runs)
    assert not torch.equal(runs[0], sample.generate(G, s, meta, 3, batch_size=2, seed=6, steps=4))


def test_ddim_may_visit_every_level_of_a_ddpm():
    sample.check_steps(dict(prior='ddpm'), 10, 10)                  # --steps K: all K levels
    with pytest.raises(ValueError, match='1..10'):
        sample.check_steps(dict(prior='ddpm'), 11, 10)


def test_the_runner_takes_the_median_of_unsorted_rates(tmp_path):
    import fashion_table as ft
    (tmp_path / 'kld_d').mkdir()
    (tmp_path / 'kld_d' / 'log.jsonl').write_text('\n'.join(json.dumps(dict(step=s, img_per_s=r))
                                                            for s, r in [(50, 64.0), (100, 8.0), (150, 16.0)]) + '\n')
    assert ft.progress(tmp_path, 'kld_d')[1] == pytest.approx(32 / 16.0)


def test_tune_recommends_the_best_finite_setting_when_one_diverges(monkeypatch, capsys):
    import pnp
    psnr = {5: float('nan'), 10: 20.0, 20: 25.0}                   # M = 5 diverges
    monkeypatch.setattr(pnp, 'evaluate', lambda G, meta, sched, op, y, images, settings, seed=0, J=1:
                        (psnr.get(settings.get('M'), 10.0), 0.5))
    monkeypatch.setattr(pnp.data, 'load_images', lambda *a, **k: [(str(i), torch.rand(3, 16, 16) * 2 - 1)
                                                                  for i in range(2)])
    args = pnp.build_parser().parse_args(['--tune', '--ckpt', 'x', '--dataset', 'fashion_mnist', '--task', 'sr2',
                                          '--M', '5', '10', '20', '--lam', '0.1', '--alpha', '0.5'])
    pnp.check_args(args)
    meta = dict(schedule='d', K=4, discretisation='original', channels=3, image_size=16, nz=0, posterior=False)
    best = pnp.tune(args, None, meta)
    assert best['sr2']['M'] == 20 and best['sr2']['psnr'] == 25.0
    assert 'best: --M 20' in capsys.readouterr().out


def test_no_checkpoint_holds_nan_weights_when_checkpoints_fall_between_log_steps(tmp_path, monkeypatch):
    """--ckpt-every 3, --log-every 2: the weights are checked at every checkpoint, not only at logged
    steps; the EMA goes non-finite at step 3, so no checkpoint is written."""
    real_update, calls = models.ema_update, []

    def poisoned(ema_params, params, decay):
        real_update(ema_params, params, decay)
        calls.append(1)
        if len(calls) == 3:
            ema_params[0].data.fill_(float('nan'))
    monkeypatch.setattr(ti.models, 'ema_update', poisoned)
    out = tmp_path / 'run'
    with pytest.raises(FloatingPointError, match=r'checked at step 3\)'):
        ti.main(ti.parse_args(['--preset', 'tiny', '--image-size', '16', '--fake-size', '16', '--device', 'cpu',
                               '--max-steps', '4', '--ckpt-every', '3', '--log-every', '2', '--out', str(out)]))
    assert 3 not in ti.checkpoints(out / 'checkpoints')


def test_kid_subsets_fit_a_reference_smaller_than_the_samples(monkeypatch):
    """KID's subsets take min(1000, samples, reference) images: with 50 samples against 20 reference
    images, subsets of 20 (more than the reference holds would fail inside torch-fidelity)."""
    import metrics
    seen = {}
    monkeypatch.setattr(metrics, '_fidelity', lambda **kw: seen.update(kw) or {})
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    metrics.fidelity_metrics(images, reference=torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8))
    assert seen['kid_subset_size'] == 20 and seen['kid'] and seen['prc']
    metrics.fidelity_metrics(images[:30], reference=torch.randint(0, 256, (1500, 3, 8, 8), dtype=torch.uint8))
    assert seen['kid_subset_size'] == 30
