"""Rendered tables (bench/render.py): every block in README.md and docs/ equals what its committed
results file renders, and a block edited by hand is found and rewritten, nothing else touched."""
import json
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / 'bench'))   # last: bench/models.py, bench/pnp.py shadow no module
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
