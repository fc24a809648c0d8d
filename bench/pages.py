"""The tables of README.md and docs/ made from results files in results/ (each says what one command
measured, with its command, date and machine): the Fashion-MNIST runner's (bench/fashion_table.py
--publish) and the 2D toy's (toy2d.py's metrics.json, one per seed). bench/render.py maps each rendered
block to its file(s) and to one of the render_* functions here; tests/test_render.py fails when a block
differs from what its files render.

Fashion-MNIST: the docs' tables are the runner's own (table.md, nfe_table.md, pnp_table.md made again
from the file). Bold marks where a row beats RGM-KLD-D, computed from the numbers. (The README's
Fashion-MNIST views are the learning curves', bench/fashion_curves.py's render_* functions.)
"""
import fashion_table as ft

# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST (bench/fashion_table.py)

def md_row(cells):
    """A markdown table line; an empty cell is written '| |'."""
    return '|' + '|'.join(f' {c} ' if c else ' ' for c in cells) + '|'


BETTER = {'fd': -1, 'kid_mean': -1, 'precision': 1, 'recall': 1, 'min_share': 1}   # +1: higher is better


def beats(r, target):
    """The metrics of BETTER on which row `r` is better than row `target`."""
    return {key for key, sign in BETTER.items() if sign * (r[key] - target[key]) > 0}


def metric_cells(r, bold=()):
    """FD, KID, precision, recall, rarest class share: the cells of the short views, those in `bold` in bold."""
    text = dict(fd=f"{r['fd']:.2f}", kid_mean=f"{r['kid_mean']:.3f}", precision=f"{r['precision']:.3f}",
                recall=f"{r['recall']:.3f}", min_share=f"{100 * r['min_share']:.1f}%")
    return [f'**{text[key]}**' if key in bold else text[key] for key in BETTER]


def table_rows(*results):
    """{row: its line of table.json} over results files, a later file's line replacing an earlier one's."""
    return {r['row']: r for res in results for r in res['table']['rows']}


def render_table(results, *later):
    """docs/fashion_mnist.md's table: the rows of a run's results file and of `later` runs' (rows scored by
    another command, another day), in the table's order; the later rows' timings carry a *: timings compare
    only within one run."""
    rows = table_rows(results, *later)
    marked = {r['row'] for res in later for r in res['table']['rows']}
    ordered = sorted(rows.values(), key=lambda r: list(ft.ROWS).index(r['row']))
    return ft.table_markdown(results['table']['n'], ordered, marked)


def nfe_point(rows, row, sampler):
    """The line of nfe.json's rows of one row at one sampler, or None."""
    return next((r for r in rows if r['row'] == row and r['sampler'] == sampler), None)


def render_nfe_table(results):
    """docs/fashion_mnist.md's NFE table: nfe_table.md without the answers' sentences (the page words them),
    the ancestral sampler's metrics in bold where they beat RGM-KLD-D's."""
    rows = results['nfe']['rows']
    target = nfe_point(rows, 'kld_d', None)
    return ft.nfe_markdown(results['nfe'], sentences=False, bold=lambda r: beats(r, target)
                           if target and r['sampler'] == ft.ANCESTRAL else ())


def render_nfe_4x(results):
    """docs/fashion_mnist.md's table of the 4x-trained DDPM at each sampler, RGM-KLD-D's point under it; in
    bold, the cells where the first DDIM step count that reaches RGM-KLD-D's FD beats RGM-KLD-D."""
    rows = results['nfe']['rows']
    target = nfe_point(rows, 'kld_d', None)
    curve = sorted((r for r in rows if r['row'] == 'ddpm_4x'), key=lambda r: r['nfe'])
    reached = next((r for r in curve if r['sampler'] != ft.ANCESTRAL and r['fd'] <= target['fd']), None)
    threads = ' or '.join(sorted({str(r['threads']) for r in curve if r.get('threads') is not None}))
    lines = ['| DDPM, 512,000 training images | NFE | FD | KID | precision | recall | class share min - max | '
             f'mean pixel | ms / image ({threads} threads) |', '|---' * 9 + '|']
    for r in curve:
        bold = beats(r, target) if r is reached else set()
        shares = f"{100 * r['min_share']:.1f}% - {100 * r['max_share']:.1f}%"
        lines.append(md_row(['ancestral' if r['sampler'] == ft.ANCESTRAL else 'DDIM', str(r['nfe']),
                             *metric_cells(r, bold)[:4], f'**{shares}**' if 'min_share' in bold else shares,
                             f"{r['mean_pixel']:.1f}", f"{r['ms_per_image']:.1f}"]))
    lines.append(f"RGM-KLD-D for comparison: FD {target['fd']:.2f}, KID {target['kid_mean']:.3f}, precision "
                 f"{target['precision']:.3f}, recall {target['recall']:.3f}, {100 * target['min_share']:.1f}% - "
                 f"{100 * target['max_share']:.1f}%, {target['ms_per_image']:.1f} ms.")
    return '\n'.join(lines) + '\n'


def render_pnp_table(results):
    """docs/fashion_mnist.md's Table 4 in small: pnp_table.md."""
    return ft.pnp_markdown(results['pnp'])


# ---------------------------------------------------------------------------------------------------------
# The 2D toy (toy2d.py): one metrics.json per seed, its `results` holding each method's and the data's

TOY_METHODS = {'kld': 'RGM-KLD', 'mmd': 'RGM-MMD', 'dswd': 'RGM-DSWD', 'mmse': 'MMSE'}


def toy_cells(seeds, method, text):
    """One cell over the seeds: text(results of `method`) per seed, joined by ' / '."""
    return ' / '.join(text(seed['results'][method]) for seed in seeds)


def toy_distance(r):
    """An energy distance: four decimals near the noise floor, two far from it."""
    return f"{r['energy_distance']:.4f}" if r['energy_distance'] < 0.1 else f"{r['energy_distance']:.2f}"


def toy_spread(r):
    return '-' if r.get('spread_min') is None else f"{r['spread_min']:.3f}-{r['spread_max']:.2f}"


def render_toy_table(*seeds):
    """docs/toy2d.md's table: each method (and fresh data) on every seed, the seeds' values side by side."""
    floor = ' / '.join(f"{seed['results']['data']['energy_distance_floor']:.4f}" for seed in seeds)
    lines = ['| method | modes (of 8) | high-quality fraction | spread / true std (min-max over modes) | energy '
             f'distance (noise floor {floor}) | training (s) |', '|---' * 6 + '|']
    for method, label in {'data': 'data (fresh samples)', **TOY_METHODS}.items():
        cells = [toy_cells(seeds, method, lambda r: str(r['modes'])),
                 toy_cells(seeds, method, lambda r: f"{r['hq_fraction']:.3f}"), toy_cells(seeds, method, toy_spread),
                 toy_cells(seeds, method, toy_distance),
                 '-' if method == 'data' else toy_cells(seeds, method, lambda r: f"{r['train_seconds']:.0f}")]
        lines.append(md_row([label, *cells]))
    return '\n'.join(lines) + '\n'


def render_toy_short(*seeds):
    """The README's view of the toy table: modes, high-quality share and energy distance of each method."""
    lines = ['| method | modes (of 8) | high-quality share | energy distance |', '|---' * 4 + '|']
    for method, label in TOY_METHODS.items():
        lines.append(md_row([label, toy_cells(seeds, method, lambda r: str(r['modes'])),
                             toy_cells(seeds, method, lambda r: f"{r['hq_fraction']:.3f}"),
                             toy_cells(seeds, method, toy_distance)]))
    return '\n'.join(lines) + '\n'
