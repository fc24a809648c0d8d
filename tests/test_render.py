"""Rendered tables (bench/render.py): every block in README.md and docs/ equals what its committed
results file renders, and a block edited by hand is found and rewritten, nothing else touched; the
views of bench/pages.py checked on numbers made here."""
import json
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module
import pages  # noqa: E402
import fashion_table as ft  # noqa: E402
import render  # noqa: E402


def test_every_rendered_block_matches_its_results_file():
    assert render.stale() == []


def test_the_documents_hold_a_block_of_every_renderer():
    names = {m.group('name') for path in render.documents() for m in render.BLOCK.finditer(path.read_text())}
    assert names == set(render.RENDERERS)


def test_a_block_edited_by_hand_is_found_and_rewritten(tmp_path, monkeypatch):
    results = dict(n=10, ancestral_n=0, command='python bench/fashion_curves.py', date='2026-01-01', machine='m',
                   points=[dict(row='kld_d', label='RGM-KLD-D, K = 4', step=4000, images=128_000, n=10, nfe=4,
                                sampler=None, fd=1.234, kid_mean=0.5, precision=0.6, recall=0.7, min_share=0.05,
                                rarest='Bag')])
    (tmp_path / 'results').mkdir()
    (tmp_path / 'results' / 'fashion_curves.json').write_text(json.dumps(results))
    doc = tmp_path / 'README.md'
    doc.write_text('before\n<!-- render: fashion_curves_table -->\n| FD 9.99 |\n<!-- /render -->\nafter\n')
    monkeypatch.setattr(render, 'ROOT', tmp_path)
    assert render.stale() == [(Path('README.md'), 'fashion_curves_table')]
    assert render.render_all() == [doc]
    text = doc.read_text()
    assert text.startswith('before\n<!-- render: fashion_curves_table -->\n| model |') and text.endswith(
        '<!-- /render -->\nafter\n')
    assert '| RGM-KLD-D, K = 4 | 1x (128,000) | chain, 4 | 1.23 | 0.500 | 0.600 | 0.700 | Bag 5.0% |' in text
    assert render.stale() == [] and render.render_all() == []


def test_an_unknown_block_is_refused():
    with pytest.raises(ValueError, match="unknown rendered block 'nope'"):
        render.rendered('nope')

def scored(fd, nfe, ms, kid=0.01, recall=0.25):
    """A sample.py metrics.json of 100 samples, as fashion_table reads it."""
    shares = {'Bag': 0.5, 'Trouser': 0.5}
    return dict(fd=fd, kid_mean=kid, precision=0.5, recall=recall, mean_pixel=60.0, n=100, n_samples=100, nfe=nfe,
                sampling_seconds=ms * 100 / 1e3, class_shares=shares, threads=1)


def test_a_results_file_renders_the_runners_own_table_and_marks_a_later_runs_timings(tmp_path):
    """The docs' table is table.md made again from the results file; rows of a later run join it in the
    table's order, replace a row of the same name, and carry a * after their timings only."""
    shares = {'Bag': 0.04, 'Shirt': 0.96}
    runs = {'kld_sr': [dict(scored(18.5, 7, 19.0), class_shares=shares, reference_mean_pixel=56.0)],
            'kld_d': [dict(scored(fd, 4, 11.4), reference_mean_pixel=56.0) for fd in (10.7, 10.75, 10.8)]}
    table = ft.write_table(tmp_path, ['kld_d', 'kld_sr'], runs, 100, minutes={'kld_sr': 40.0})
    first = dict(table=table)
    assert pages.render_table(first) == (tmp_path / 'table.md').read_text()
    k1 = ft.summarise('kld_d_k1', [scored(4.62, 1, 4.8)], minutes=57.0)
    sr = ft.summarise('kld_sr', [scored(30.0, 7, 20.0)], minutes=41.0)
    lines = pages.render_table(first, dict(table=dict(n=100, rows=[sr, k1]))).splitlines()
    assert [line.split(' | ')[0] for line in lines[2:5]] == ['| RGM-KLD-D, K = 4', '| RGM-KLD-SR, K = 7',
                                                            '| RGM-KLD-D, K = 1 (one step)']
    assert '| 11.4 |' in lines[2] and '| 41 * |' in lines[3] and '| 30.00 |' in lines[3]
    assert lines[4].endswith('| 4.8 * |') and '| 57 * |' in lines[4]


def test_the_views_set_in_bold_where_a_ddpm_point_beats_rgm_kld_d():
    """The NFE table: the ancestral point's cells where it beats RGM-KLD-D (lower FD and KID, higher
    precision, recall and rarest share), not where it loses; the 4x view: the first DDIM step count that
    reaches RGM-KLD-D's FD, on the same rule."""
    rgm = ft.Point('kld_d', ft.Sampling(100, 0, None, 4), dict(scored(5.0, 4, 10.0, kid=0.10, recall=0.2),
                                                               class_shares={'Bag': 0.02, 'Shirt': 0.98}))
    ancestral = ft.Point('ddpm', ft.Sampling(100, 0, ft.ANCESTRAL, 1000), scored(4.0, 1000, 7000.0, kid=0.2, recall=0.3))
    ddim = [ft.Point(row, ft.Sampling(100, 0, s, s), scored(fd, s, 2.0 * s, kid=0.05, recall=0.1))
            for row in ('ddpm', 'ddpm_4x') for s, fd in ((10, 9.0), (25, 4.9), (100, 3.0))]
    nfe = dict(rows=ft.nfe_rows([rgm, ancestral, *ddim], 100, {}))
    four = pages.render_nfe_4x(dict(nfe=nfe)).splitlines()
    assert four[3] == '| DDIM | 25 | **4.90** | **0.050** | 0.500 | 0.100 | **50.0% - 50.0%** | 60.0 | 50.0 |'
    assert '**' not in four[2] + four[4] and four[-1].startswith('RGM-KLD-D for comparison: FD 5.00, KID 0.100')
    assert '| **4.00** | 0.200 | 0.500 | **0.300** |' in pages.render_nfe_table(dict(nfe=dict(nfe, n=100)))


def test_the_toy_tables_join_the_seeds_and_write_what_is_not_measured_as_a_dash():
    def seed(ed, spread, hq, seconds):
        methods = {m: dict(modes=8, hq_fraction=hq, spread_min=spread[0], spread_max=spread[1], energy_distance=ed,
                           train_seconds=seconds) for m in ('kld', 'mmd', 'dswd')}
        methods['mmse'] = dict(modes=0, hq_fraction=0.0, spread_min=None, spread_max=None, energy_distance=0.2659,
                               train_seconds=5.0)
        data = dict(modes=8, hq_fraction=0.9891, spread_min=0.9667, spread_max=0.9941, energy_distance=0.0007,
                    energy_distance_floor=0.00071)
        return dict(results=dict(data=data, **methods))
    seeds = (seed(0.0010, (0.9402, 0.9893), 0.9644, 223.0), seed(0.0022, (0.912, 1.08), 0.965, 198.4))
    table = pages.render_toy_table(*seeds).splitlines()
    assert 'energy distance (noise floor 0.0007 / 0.0007)' in table[0]
    assert table[2] == '| data (fresh samples) | 8 / 8 | 0.989 / 0.989 | 0.967-0.99 / 0.967-0.99 | 0.0007 / 0.0007 | - |'
    assert table[3] == '| RGM-KLD | 8 / 8 | 0.964 / 0.965 | 0.940-0.99 / 0.912-1.08 | 0.0010 / 0.0022 | 223 / 198 |'
    assert table[6] == '| MMSE | 0 / 0 | 0.000 / 0.000 | - / - | 0.27 / 0.27 | 5 / 5 |'
    assert pages.render_toy_short(*seeds).splitlines()[2] == '| RGM-KLD | 8 / 8 | 0.964 / 0.965 | 0.0010 / 0.0022 |'
