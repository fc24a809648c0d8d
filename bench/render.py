"""Tables in README.md and docs/ rendered from the results files committed in results/, so that a
number shown cannot drift from the run that made it:

    python bench/render.py            # rewrite every rendered block from its results file
    python bench/render.py --check    # exit 1 naming each block that differs (tests/test_render.py)

A rendered block is marked in the markdown by an opening and a closing comment:

    <!-- render: fashion_curves_table -->
    ...the rendered text...
    <!-- /render -->

and RENDERERS maps its name to its results file (or files) and the function that makes the text from
their JSON. Text between the markers is replaced; nothing else in the file is touched.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
sys.path.insert(0, str(ROOT))               # before bench/: models is the repository's, not bench/models.py
DOCS = ('README.md', 'docs/*.md')
BLOCK = re.compile(r'(<!-- render: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /render -->)', re.S)


def _curves(render):
    def make(results):
        import fashion_curves
        return getattr(fashion_curves, render)(results)
    return make


def _load(results):
    import load
    return (f"`{results['command']}`, {results['date']}, {results['machine']}, torch {results['torch']}, "
            f"preset {results['preset']}, {results['steps']} timed steps a row:\n\n{load.table(results['rows'])}\n")


def read(path):
    """A results file: JSON, or a benchmark's markdown output (its text)."""
    text = (ROOT / path).read_text()
    return text if path.endswith('.md') else json.loads(text)


def _verbatim(text):
    """A benchmark's markdown output as it printed it: the command line first, then its tables."""
    return text


def _pages(render):
    def make(*results):
        import pages
        return getattr(pages, render)(*results)
    return make


# Fashion-MNIST: one results file per command of bench/fashion_table.py (its --publish NAME writes them)
TABLE = ('results/fashion_table.json', 'results/fashion_table_ablations.json')      # the ablations: a later run
# the 2D toy: toy2d.py's metrics.json of each seed
TOY = tuple(f'results/toy2d_seed{seed}.json' for seed in (0, 1, 2))

# name: (results file or files, function of their JSON -> markdown)
RENDERERS = {
    'fashion_table': (TABLE, _pages('render_table')),
    'fashion_nfe_table': ('results/fashion_nfe.json', _pages('render_nfe_table')),
    'fashion_nfe_4x': ('results/fashion_nfe_4x.json', _pages('render_nfe_4x')),
    'fashion_pnp_table': ('results/fashion_pnp.json', _pages('render_pnp_table')),
    'toy2d_table': (TOY, _pages('render_toy_table')),
    'load_table': ('results/load_fashion_kld_d_2026-12-04.json', _load),
    'toy2d_short': (TOY, _pages('render_toy_short')),
    'fashion_curves_table': ('results/fashion_curves.json', _curves('render_table')),
    'fashion_curves_claims': ('results/fashion_curves.json', _curves('render_claims')),
    'fashion_curves_claims_short': ('results/fashion_curves.json', _curves('render_claims_short')),
    'fashion_curves_status': ('results/fashion_curves.json', _curves('render_status')),
    'fashion_curves_main': ('results/fashion_curves.json', _curves('render_main')),
    'fashion_curves_lambda': ('results/fashion_curves.json', _curves('render_lambda')),
    'fashion_curves_ddpm': ('results/fashion_curves.json', _curves('render_ddpm')),
    'fashion_curves_ddpm_short': ('results/fashion_curves.json', _curves('render_ddpm_short')),
    'sampling_cpu': ('results/sampling_cpu_2026-12-04.md', _verbatim),
    'train_step_bf16': ('results/train_step_bf16_cpu_2026-12-04.md', _verbatim),
    'fashion_pnp_4x': ('results/fashion_pnp_4x_2026-12-04.md', _verbatim),
}


def rendered(name):
    """The text of block `name`, made from its results file."""
    if name not in RENDERERS:
        raise ValueError(f'unknown rendered block {name!r}; known: {", ".join(RENDERERS)}')
    paths, make = RENDERERS[name]
    text = make(*(read(path) for path in ([paths] if isinstance(paths, str) else paths)))
    return text if text.endswith('\n') else text + '\n'


def documents():
    return [path for pattern in DOCS for path in sorted(ROOT.glob(pattern))]


def render_text(text):
    """`text` with every block replaced by its rendering."""
    return BLOCK.sub(lambda m: m.group(1) + rendered(m.group('name')) + m.group(4), text)


def stale():
    """(file, block name) of every block whose text differs from its rendering."""
    return [(path.relative_to(ROOT), m.group('name')) for path in documents()
            for m in BLOCK.finditer(path.read_text()) if m.group('body') != rendered(m.group('name'))]


def render_all():
    """Rewrite the documents whose blocks are stale; returns their paths."""
    changed = []
    for path in documents():
        text = path.read_text()
        new = render_text(text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(args):
    if args.check:
        bad = stale()
        print('\n'.join(f'stale: {path} block {name} (run python bench/render.py)' for path, name in bad)
              or 'every rendered block matches its results file')
        sys.exit(1 if bad else 0)
    for path in render_all():
        print(f'rendered {path}')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--check', action='store_true', help='change nothing; exit 1 if a block is stale')
    args = p.parse_args()
    import cli
    cli.run_main(main, args)
