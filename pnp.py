"""Plug-and-play restoration with a trained RGM generator (Section 4.4, Appendix B.4, Algorithm 4), and the
search for its settings on training images (--tune).

An observation y = H x + n, n ~ N(0, sigma_y^2 I), is restored by Douglas-Rachford splitting
(DRS) between the data term f(x) = 1/2 ||H x - y||^2 and the generator used as a denoiser.
H is applied through its SVD H = U diag(s) V^T, never as a dense matrix (DDRM, Kawar et al.
2022). Images live in [-1, 1]; PSNR and SSIM are computed on [0, 1].

    python pnp.py --task sr4 --ckpt ckpt.pt --dataset cifar10 --data-dir data --n 100 --out out/sr4
    python pnp.py --task denoise --sigma-y 25 --ckpt runs/fashion_kld/checkpoints/ckpt_00004000.pt \
        --dataset fashion_mnist --n 100 --out out/fashion_denoise
    python pnp.py --tune --ckpt runs/fashion_kld/checkpoints/ckpt_00004000.pt --dataset fashion_mnist --n 100
"""
import argparse
import csv
import itertools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import cli
import data
import schedules


# ----------------------------------------------------------------------------
# Degradations as SVD objects. Spectral coordinates are (B, D) vectors, D = C H W: the first
# m = len(s) pair with the singular values (row space of H), the other D - m span its null space.

class SVDOperator:
    """H on images (B, C, H, W) through H = U diag(s) V^T; subclasses give V, Vt, U, Ut and s (all s > 0)."""

    def __init__(self, x_shape):
        self.x_shape = tuple(x_shape)                    # (C, H, W) of the clean image
        self.D = math.prod(self.x_shape)

    m = property(lambda self: self.s.numel())           # number of observed values

    def H(self, x):
        return self.U(self.s.to(x) * self.Vt(x)[:, :self.m])

    def Ht(self, y):
        return self.V(self.add_zeros(self.s.to(y) * self.Ut(y)))

    def pinv(self, y):
        """Moore-Penrose pseudo-inverse: H^+ y = V [diag(1/s) U^T y; 0]."""
        return self.V(self.add_zeros(self.Ut(y) / self.s.to(y)))

    def prox(self, v, y, lam):
        """prox_{lam f}(v) = (I + lam H^T H)^{-1} (v + lam H^T y) = V diag(1 / (1 + lam s^2)) V^T (v + lam H^T y)
        (Algorithm 4's data step). The full V: null-space coordinates of v pass through unchanged."""
        c = self.Vt(v + lam * self.Ht(y))
        return self.V(torch.cat([c[:, :self.m] / (1 + lam * self.s.to(c) ** 2), c[:, self.m:]], 1))

    def add_zeros(self, c):
        """(B, m) row-space coordinates -> (B, D), zero in the null space."""
        return torch.cat([c, c.new_zeros(c.shape[0], self.D - self.m)], 1)

    def to(self, device):
        """Keep the operator's tables (singular values, V blocks, index orders) on `device`. Returns self."""
        for name, value in vars(self).items():
            if torch.is_tensor(value):
                setattr(self, name, value.to(device))
        return self

    def check(self, x):
        if tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(f'{type(self).__name__} was built for images {self.x_shape}, got {tuple(x.shape[1:])}')
        return x


def householder(n):
    """Symmetric orthogonal n x n matrix (float64) whose first column is 1/sqrt(n): the reflection
    that swaps e_1 and 1/sqrt(n)."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    w = torch.eye(n, dtype=torch.float64)[0] - torch.full((n,), n ** -0.5, dtype=torch.float64)   # e_1 - u
    return torch.eye(n, dtype=torch.float64) - 2 * torch.outer(w, w) / (w @ w)


class GroupMean(SVDOperator):
    """H replaces each group of n entries by its mean. Per group H = (1/n) 1^T = (1/sqrt n) u^T with
    u = 1/sqrt(n): one singular value 1/sqrt(n), U = 1, and V any orthogonal matrix with first column u."""
    n = 1

    def __init__(self, x_shape):
        super().__init__(x_shape)
        self.Vg = householder(self.n)                                       # (n, n)
        self.s = torch.full((self.D // self.n,), self.n ** -0.5, dtype=torch.float64)

    def Vt(self, x):
        c = self.group(self.check(x)) @ self.Vg.to(x)                       # (B, G, n), row-wise Vg^T g
        return torch.cat([c[..., 0], c[..., 1:].flatten(1)], 1)             # (B, D)

    def V(self, c):
        B, G = c.shape[0], self.m
        c = torch.cat([c[:, :G, None], c[:, G:].reshape(B, G, self.n - 1)], 2)
        return self.ungroup(c @ self.Vg.to(c).T)                            # (B, C, H, W)

    def Ut(self, y):
        return y.reshape(y.shape[0], -1)

    def U(self, c):
        return c.reshape(c.shape[0], *self.y_shape)


class Denoising(GroupMean):
    """H = I: groups of one pixel, s = 1."""
    y_shape = property(lambda self: self.x_shape)

    def group(self, x):
        return x.reshape(x.shape[0], -1, 1)

    def ungroup(self, g):
        return g.reshape(g.shape[0], *self.x_shape)


class SuperResolution(GroupMean):
    """Each f x f block averaged (Appendix B.4): groups of n = f^2 pixels, s = 1/f; y is (B, C, H/f, W/f)."""

    def __init__(self, x_shape, factor):
        C, H, W = x_shape
        if H % factor or W % factor:
            raise ValueError(f'super-resolution x{factor} needs image sides divisible by {factor}, got {H}x{W}')
        self.factor, self.n, self.y_shape = factor, factor**2, (C, H // factor, W // factor)
        super().__init__(x_shape)

    def group(self, x):
        (C, h, w), f = self.y_shape, self.factor
        return x.reshape(-1, C, h, f, w, f).permute(0, 1, 2, 4, 3, 5).reshape(x.shape[0], C * h * w, f * f)

    def ungroup(self, g):
        (C, h, w), f = self.y_shape, self.factor
        return g.reshape(-1, C, h, w, f, f).permute(0, 1, 2, 4, 3, 5).reshape(g.shape[0], *self.x_shape)


class Colorization(GroupMean):
    """Gray = channel mean, per pixel [1/3, 1/3, 1/3] (Appendix B.4): n = 3, s = 1/sqrt(3); y is (B, 1, H, W)."""
    n = 3

    def __init__(self, x_shape):
        if x_shape[0] != 3:
            raise ValueError(f'colorization needs a colour (3-channel) model, got {x_shape[0]} channel(s)')
        self.y_shape = (1, *x_shape[1:])
        super().__init__(x_shape)

    def group(self, x):
        return x.reshape(x.shape[0], 3, -1).transpose(1, 2)                # (B, H W, 3)

    def ungroup(self, g):
        return g.transpose(1, 2).reshape(g.shape[0], *self.x_shape)


class Inpainting(SVDOperator):
    """Keep the pixels where `mask` is true: H selects them, s = 1, V^T lists kept then missing entries."""

    def __init__(self, x_shape, mask):
        super().__init__(x_shape)
        keep = mask.expand(self.x_shape).flatten().bool()
        self.order = torch.cat([keep.nonzero()[:, 0], (~keep).nonzero()[:, 0]])
        self.inverse = torch.argsort(self.order)
        self.s = torch.ones(int(keep.sum()), dtype=torch.float64)
        self.y_shape = (self.m,)

    def Vt(self, x):
        return self.check(x).flatten(1)[:, self.order.to(x.device)]

    def V(self, c):
        return c[:, self.inverse.to(c.device)].reshape(c.shape[0], *self.x_shape)

    def Ut(self, y):
        return y

    def U(self, c):
        return c


def random_mask(x_shape, keep=0.5, seed=0):
    """(1, H, W) pixel mask shared by the channels, each pixel kept with probability `keep`."""
    return torch.rand((1, *x_shape[1:]), generator=torch.Generator().manual_seed(seed)) < keep


TASKS = {
    'denoise': Denoising,
    'sr2': lambda x_shape: SuperResolution(x_shape, 2),
    'sr4': lambda x_shape: SuperResolution(x_shape, 4),
    'sr8': lambda x_shape: SuperResolution(x_shape, 8),
    'color': Colorization,
    'inpaint': lambda x_shape: Inpainting(x_shape, random_mask(x_shape)),   # not in the paper: half the pixels
}


def make_operator(task, x_shape):
    """The SVD operator of a task (registry TASKS) for clean images of shape (C, H, W)."""
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}: choose one of {sorted(TASKS)}')
    return TASKS[task](tuple(x_shape))


def sigma_to_unit(sigma_y):
    """Noise std in 0-255 units -> [-1, 1] units (a range of 2): 2 sigma_y / 255."""
    return 2 * sigma_y / 255


def degrade(x, op, sigma, generator=None):
    """y = H x + sigma n, n ~ N(0, I); sigma in [-1, 1] units."""
    y = op.H(x)
    device = y.device if generator is None else generator.device
    return y + sigma * torch.randn(y.shape, generator=generator, device=device).to(y)


# ----------------------------------------------------------------------------
# Algorithm 4: Douglas-Rachford splitting with a plug-in denoiser.

ITERATES = ('x', 'y', 'prox', 'all')


@torch.no_grad()
def drs(y, op, denoise, x_init=None, M=10, J=1, alpha=0.2, lam=0.1, return_iterate='x'):
    """Restore the observation `y` (the argument; written y_obs below). Per step j, with Algorithm
    4's names for the three iterates:
        v = (1 - alpha) x + alpha denoise(x, j)         relaxed denoiser        ('y' in Algorithm 4)
        z = prox_{lam f}(2 v - x)                        reflected data step, f(u) = 1/2 ||H u - y_obs||^2
        x = x + z - v                                    DRS variable
    return_iterate: 'x' (the authors' choice), 'y' (the denoised iterate v), 'prox' (z, which fits
    the data) or 'all' (a dict of the three). With a Gaussian prior's exact denoiser, alpha = 1 and
    lam = sigma^2 / sigma_y^2, v and z converge to the posterior mean while x stays off it by
    -lam H^T (H v - y_obs): at a fixed point z = v (the x update stops moving), and z = prox(2v - x)
    reads v + lam H^T (H v - y_obs) = 2v - x, so x = v - lam H^T (H v - y_obs)."""
    if return_iterate not in ITERATES:
        raise ValueError(f'return_iterate must be one of {ITERATES}, got {return_iterate!r}')
    if M < 1 or J < 1:
        raise ValueError(f'M and J must be >= 1, got M={M}, J={J}')
    x = op.pinv(y) if x_init is None else x_init          # line 1 (colorization: gray copied to 3 channels)
    for _ in range(M):
        for j in range(J, 0, -1):
            y_j = (1 - alpha) * x + alpha * denoise(x, j)  # lines 4-5
            z = op.prox(2 * y_j - x, y, lam)               # line 6
            x = x + z - y_j                                # line 7
    return {'x': x, 'y': y_j, 'prox': z, 'all': dict(x=x, y=y_j, prox=z)}[return_iterate]


def baselines(y, op):
    """The restorations RGM is compared with: the pseudo-inverse H^+ y, and bicubic upsampling for
    super-resolution. {name: (B, C, H, W)}."""
    out = {'pinv': op.pinv(y)}
    if isinstance(op, SuperResolution):
        out['bicubic'] = F.interpolate(y, scale_factor=op.factor, mode='bicubic', align_corners=False)
    return out


def rgm_denoiser(G, schedule, nz, noise_scale=0.99, generator=None):
    """denoise(x, j) = G(x_j, j - 1, z): x_j = forward(x, j) with its noise scaled by noise_scale,
    z ~ N(0, I) (Algorithm 4, lines 4-5; the authors' noise_factor 0.99)."""
    def denoise(x, j):
        k = torch.full((x.shape[0],), j, dtype=torch.long, device=x.device)
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=device).to(x)
        x_j = schedule.sample(x, k, noise=noise, noise_scale=noise_scale)
        z = torch.randn(x.shape[0], nz, generator=generator, device=device).to(x) if nz > 0 else None
        return G(x_j, k - 1, z)                            # G sees level j and is told the target level j - 1
    return denoise


# Table 6 (Appendix B.4). J: Table 6 gives it for 256 px only (SR 1, colorization 2); Appendix B.4
# sets it for colorization and for 'denoising and SR' (values lost from the extracted text), and the
# authors' script defaults to T = 1: we use J = 1 for CIFAR-10.
SETTINGS = {
    ('cifar10', 'sr2'): dict(M=5, lam=0.2, alpha=0.2, J=1),
    ('cifar10', 'sr4'): dict(M=10, lam=0.1, alpha=0.2, J=1),
    # Denoising has three CIFAR-10 columns, (M, lam, alpha) = (10, 0.01, 0.2), (20, 5, 0.1), (10, 5, 0.1);
    # the noise level of each was lost from the paper text. We default to the first.
    ('cifar10', 'denoise'): dict(M=10, lam=0.01, alpha=0.2, J=1),
    ('celeba256', 'sr4'): dict(M=40, lam=10, alpha=0.05, J=1),
    ('celeba256', 'sr8'): dict(M=40, lam=10, alpha=0.05, J=1),
    ('celeba256', 'color'): dict(M=20, lam=5, alpha=0.5, J=2),
}


def paper_settings(task, image_size):
    """(settings, where they come from) for a task at an image size (<= 64: the CIFAR-10 column)."""
    family = 'cifar10' if image_size <= 64 else 'celeba256'
    if (family, task) in SETTINGS:
        return dict(SETTINGS[family, task]), f'Table 6, {family} {task}'
    other = [key for key in SETTINGS if key[1] == task]
    key = other[0] if other else ('celeba256', 'color')
    return dict(SETTINGS[key]), f'not in Table 6 for {family} {task}: Table 6, {key[0]} {key[1]}'


# ----------------------------------------------------------------------------
# Metrics on images in [0, 1].

def to_unit(x):
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def psnr(x, ref):
    """Per-image PSNR (dB) with peak 1: 10 log10(1 / MSE); inf for identical images."""
    return 10 * torch.log10(1 / (x.double() - ref.double()).square().flatten(1).mean(1))


def gaussian_window(size=11, sigma=1.5):
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma**2))
    return torch.outer(g, g) / g.sum() ** 2


def ssim(x, ref, K1=0.01, K2=0.03, data_range=1.0):
    """Per-image SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5) at valid positions, mean
    over positions and channels. SSIM = (2 mu_x mu_r + C1)(2 cov + C2) / ((mu_x^2 + mu_r^2 + C1)(var_x + var_r + C2))."""
    if min(x.shape[-2:]) < 11:
        raise ValueError(f'SSIM needs images of at least 11x11, got {tuple(x.shape[-2:])}')
    x, ref, C = x.double(), ref.double(), x.shape[1]
    window = gaussian_window().to(x.device).expand(C, 1, 11, 11)
    mean = lambda t: F.conv2d(t, window, groups=C)
    mu_x, mu_r = mean(x), mean(ref)
    var_x, var_r, cov = mean(x * x) - mu_x**2, mean(ref * ref) - mu_r**2, mean(x * ref) - mu_x * mu_r
    C1, C2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = (2 * mu_x * mu_r + C1) * (2 * cov + C2) / ((mu_x**2 + mu_r**2 + C1) * (var_x + var_r + C2))
    return s.flatten(1).mean(1)


# ----------------------------------------------------------------------------
# Command line: load the generator and the images, degrade, restore, score.

OUTPUTS = ('restored', 'grid_*.png', 'metrics.csv', 'summary.json')        # what a run writes in --out


def load_inputs(args):
    """[(name, image (C, H, W) in [-1, 1])] from the chosen source, first args.n (data.load_images)."""
    if args.dataset:
        return data.load_images(args.dataset, args.data_dir, args.split, args.n)
    if args.folder:
        files = data.list_images(args.folder)[:args.n]
        if not files:
            raise FileNotFoundError(f'no images ({", ".join(data.IMAGE_EXTENSIONS)}) in {args.folder}')
    else:
        files = args.image or args.observed
    if not args.observed:           # metrics.csv (UTF-8) names each clean image
        for path in files:
            try:
                Path(path).stem.encode('utf-8')
            except UnicodeEncodeError:
                raise ValueError(f'{str(path)!r}: the file name is not UTF-8, so metrics.csv cannot name it: '
                                 'rename the file (or restore it as --observed, which writes no metrics)') from None
    return data.load_images(files=files)


def clean_shape(image, task, observed, C, S):
    """Shape of the clean image behind an input, after the checks that give clear errors."""
    c, h, w = image.shape
    if observed and task == 'inpaint':
        raise ValueError('--observed cannot be inpainted (the mask is unknown): pass the clean image with --image')
    if observed and task == 'color':
        if c != 1:
            raise ValueError('colorization --observed takes a gray image (1 channel), got a colour image')
        c = 3
    elif c == 1 and C == 3:
        raise ValueError('the input is gray but the model is a colour model (3 channels); '
                         'to colorize a gray photo use --task color --observed PATH')
    elif c != C:
        raise ValueError(f'the input has {c} channels, the model {C}')
    f = int(task[2:]) if observed and task.startswith('sr') else 1
    x_shape = (c, h * f, w * f)
    make_operator(task, x_shape)                       # raises if not divisible by the SR factor
    if x_shape[1:] != (S, S):
        raise ValueError(f'the clean image would be {x_shape[1]}x{x_shape[2]} but the checkpoint was trained on '
                         f'{S}x{S} images: crop or resize the input first')
    return x_shape


TUNE_GRID = dict(M=[5, 10, 20], lam=[0.01, 0.1, 1.0, 5.0], alpha=[0.1, 0.2, 0.5])     # --tune's defaults
TUNE_TASKS = ['denoise', 'sr2', 'sr4', 'inpaint']


def check_args(args):
    """Errors that need no file: before anything is loaded or written. Fills the mode's defaults."""
    if args.tune:
        if not args.dataset:
            raise ValueError('--tune chooses settings on a data set\'s training images: give --dataset')
        if args.split not in (None, 'train'):
            raise ValueError('--tune runs on the training split only, so that the test images play no part in the '
                             'choice: drop --split test')
        if args.observed or args.return_iterate != 'x':
            raise ValueError('--tune restores clean training images it degrades itself, returning x')
        args.split, args.task, args.J = 'train', args.task or TUNE_TASKS, args.J[0] if args.J else 1
        args.sigma_y = 25.0 if args.sigma_y is None else args.sigma_y
        if args.sigma_y <= 0 and 'denoise' in args.task:
            raise ValueError('--task denoise needs noise to remove: give --sigma-y > 0 (default 25)')
        for key, grid in TUNE_GRID.items():
            setattr(args, key, getattr(args, key) or grid)
        return
    if not args.task or len(args.task) > 1:
        raise ValueError('give one --task (several only with --tune)')
    if args.out is None:
        raise ValueError('--out is required (the folder for the restored images)')
    for key in ('M', 'J', 'lam', 'alpha'):
        values = getattr(args, key)
        if values is not None and len(values) > 1:
            raise ValueError(f'--{key} takes one value (a grid of values only with --tune)')
        setattr(args, key, values and values[0])
    args.task, args.split = args.task[0], args.split or 'test'
    if args.observed:           # restored as they are: no noise is added
        if args.sigma_y:
            raise ValueError('--sigma-y adds noise to clean images; --observed images are restored as they are')
        args.sigma_y = 0.0
    elif args.sigma_y is None:
        args.sigma_y = 25.0 if args.task == 'denoise' else 0.0
    if args.task == 'denoise' and not args.observed and args.sigma_y == 0:
        raise ValueError('--task denoise needs noise to remove: give --sigma-y > 0 (default 25)')


def main(args):
    check_args(args)
    torch.manual_seed(args.seed)
    G, meta = cli.load_generator(args, args.device)
    if args.tune:
        return tune(args, G, meta)
    out = Path(args.out)
    if args.task == 'color' and meta['channels'] != 3:
        raise ValueError(f"colorization needs a colour model (3 channels); {args.ckpt} makes "
                         f"{meta['channels']}-channel images")
    schedule = schedules.schedule_of(meta, args.device)
    settings, source = paper_settings(args.task, meta['image_size'])
    settings.update({k: getattr(args, k) for k in settings if getattr(args, k) is not None})
    if settings['J'] > schedule.K:
        raise ValueError(f"J = {settings['J']} exceeds the checkpoint's K = {schedule.K}")
    print(f'{args.task}: {settings} ({source}), sigma_y {args.sigma_y}/255, returning {args.return_iterate}')

    items, observed = load_inputs(args), args.observed is not None
    shapes = set()
    for name, image in items:
        try:
            shapes.add(clean_shape(image, args.task, observed, meta['channels'], meta['image_size']))
        except ValueError as e:
            raise ValueError(f'{name}: {e}') from None
    op = make_operator(args.task, shapes.pop()).to(args.device)   # one shape: clean_shape checked each
    denoise = rgm_denoiser(G, schedule, meta['nz'], args.noise_scale)
    noise = torch.Generator().manual_seed(args.seed)
    cli.prepare_out(str(out), OUTPUTS, args.overwrite, 'pnp.py run')
    (out / 'restored').mkdir(parents=True, exist_ok=True)
    rows, seconds = [], 0.0
    for start in range(0, len(items), args.batch_size):
        names, batch = zip(*items[start:start + args.batch_size])
        batch = torch.stack(batch).to(args.device)                                  # (B, C, H, W)
        x, y = (None, batch) if observed else (batch, degrade(batch, op, sigma_to_unit(args.sigma_y), noise))
        results = baselines(y, op)                                                   # observation shown as H^+ y
        tic = time.perf_counter()
        results['rgm'] = drs(y, op, denoise, return_iterate=args.return_iterate, **settings)
        if batch.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - tic
        panels = ([] if x is None else [x]) + list(results.values())                # gt | H^+ y | bicubic | RGM
        torchvision.utils.save_image(to_unit(torch.stack(panels, 1).flatten(0, 1)),
                                     out / f'grid_{start // args.batch_size:03d}.png', nrow=len(panels))
        for name, restored in zip(names, results['rgm']):
            torchvision.utils.save_image(to_unit(restored), out / 'restored' / f'{name}.png')
        for method, x_hat in ([] if x is None else results.items()):
            p, s = psnr(to_unit(x_hat), to_unit(x)), ssim(to_unit(x_hat), to_unit(x))
            rows += [dict(image=n, method=method, psnr=float(a), ssim=float(b)) for n, a, b in zip(names, p, s)]

    summary = dict(task=args.task, sigma_y=args.sigma_y, settings=settings, settings_source=source,
                   return_iterate=args.return_iterate, noise_scale=args.noise_scale, n=len(items),
                   ckpt=args.ckpt, seconds_per_image=seconds / len(items), mean={})
    if rows:
        with open(out / 'metrics.csv', 'w', newline='') as file:
            writer = csv.DictWriter(file, fieldnames=['image', 'method', 'psnr', 'ssim'])
            writer.writeheader()
            writer.writerows(rows)
        for method in dict.fromkeys(r['method'] for r in rows):
            mine = [r for r in rows if r['method'] == method]
            summary['mean'][method] = {k: sum(r[k] for r in mine) / len(mine) for k in ('psnr', 'ssim')}
            print(f"{method:8s} PSNR {summary['mean'][method]['psnr']:6.2f}  SSIM {summary['mean'][method]['ssim']:.4f}")
    cli.write_json(out / 'summary.json', summary)
    print(f'{len(items)} images, {summary["seconds_per_image"]:.3f} s/image; wrote {out}')


# ----------------------------------------------------------------------------
# --tune: choose M, lambda and alpha on *training* images, so that the test images play no part.

def observe(task, images, sigma_y, seed=0):
    """The task's operator and the observations y = H x + noise of `images` (B, C, H, W) in [-1, 1]:
    one draw per task, shared by every setting and by the baselines."""
    op = make_operator(task, images.shape[1:]).to(images.device)
    return op, degrade(images, op, sigma_to_unit(sigma_y), torch.Generator().manual_seed(seed))


def mean_scores(x, images):
    """Mean PSNR and SSIM of restorations x against the clean images (both in [-1, 1])."""
    x, truth = to_unit(x), to_unit(images)
    return psnr(x, truth).mean().item(), ssim(x, truth).mean().item()


def evaluate(G, meta, schedule, op, y, images, settings, seed=0, J=1):
    """Mean PSNR and SSIM of RGM-DRS restoring y for one setting, J levels per iteration."""
    denoise = rgm_denoiser(G, schedule, meta['nz'], generator=torch.Generator(images.device).manual_seed(seed))
    return mean_scores(drs(y, op, denoise, J=J, **settings), images)


def tune(args, G, meta):
    """For each task, pnp.drs on the first --n training images over the grid --M x --lam x --alpha
    (at --J levels per iteration, default 1 as Table 6 for 32 px images): a table of the --show settings of highest mean PSNR, best
    first, beside the Table 6 setting and the baselines, then the flags of the best setting. Returns
    {task: the best setting with its mean PSNR and SSIM}."""
    schedule = schedules.schedule_of(meta, args.device)
    if args.J > schedule.K:
        raise ValueError(f"--J {args.J} exceeds the checkpoint's K = {schedule.K} (levels per iteration, J..1)")
    images = torch.stack([image for _, image in data.load_images(args.dataset, args.data_dir, 'train', args.n)])
    images = images.to(args.device)
    if images.shape[1] != meta['channels']:
        raise ValueError(f"{args.dataset} has {images.shape[1]}-channel images, {args.ckpt} makes "
                         f"{meta['channels']}-channel ones")
    grid = list(itertools.product(args.M, args.lam, args.alpha))
    print(f'{args.ckpt}: {len(images)} training images of {args.dataset}, {len(grid)} settings per task, J = {args.J}')
    best = {}
    for task in args.task:
        sigma_y = args.sigma_y if task == 'denoise' else 0.0
        tic, rows = time.perf_counter(), []
        op, y = observe(task, images, sigma_y, args.seed)
        for M, lam, alpha in grid:
            p, s = evaluate(G, meta, schedule, op, y, images, dict(M=M, lam=lam, alpha=alpha), args.seed, args.J)
            rows.append((p, s, M, lam, alpha))
        rows.sort(key=lambda row: row[0] if math.isfinite(row[0]) else -math.inf, reverse=True)   # NaN last
        table6 = {k: v for k, v in paper_settings(task, meta['image_size'])[0].items() if k != 'J'}
        paper = evaluate(G, meta, schedule, op, y, images, table6, args.seed, args.J)
        others = ', '.join(f'{name} {mean_scores(x, images)[0]:.2f}' for name, x in baselines(y, op).items())
        print(f'\n{task} (sigma_y {sigma_y}): {time.perf_counter() - tic:.0f} s; Table 6 setting {table6}: '
              f'PSNR {paper[0]:.2f}; baselines: {others}\n')
        print('| M | lambda | alpha | PSNR | SSIM |\n|---|---|---|---|---|')
        for p, s, M, lam, alpha in rows[:args.show]:
            print(f'| {M} | {lam:g} | {alpha:g} | {p:.2f} | {s:.4f} |')
        p, s, M, lam, alpha = rows[0]
        if not math.isfinite(p):
            raise FloatingPointError(f'{task}: every setting gives a non-finite PSNR: the generator or the '
                                     'settings are broken, no setting is recommended')
        print(f'\nbest: --M {M} --lam {lam:g} --alpha {alpha:g} --J {args.J}', flush=True)
        best[task] = dict(M=M, lam=lam, alpha=alpha, J=args.J, psnr=p, ssim=s)
    return best


def relaxation(text):
    """alpha of Algorithm 4 in (0, 1]: v = (1 - alpha) x + alpha denoise(x) mixes x with its denoised
    version; above 1 the step extrapolates past the denoiser and the iterates blow up."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'must be in (0, 1] (a mix of x and its denoised version), got {text}')
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        description='Restore images with a trained RGM generator (Algorithm 4, DRS), or with --tune choose its '
                    'settings on training images. M, J, alpha and lambda default to the paper\'s Table 6 for the '
                    'task (its CIFAR-10 column for images up to 64 px). Denoising: Table 6 has three CIFAR-10 '
                    'columns whose noise levels were lost from the paper; the first (M 10, lambda 0.01, alpha 0.2) '
                    'is used whatever --sigma-y is, so give --M, --lam and --alpha for other noise levels (or '
                    'find them with --tune).')
    parser.add_argument('--task', nargs='+', choices=sorted(TASKS),
                        help='the degradation (one; with --tune several, default ' + ' '.join(TUNE_TASKS) + ')')
    cli.add_generator_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--dataset', choices=['cifar10', 'fashion_mnist'],
                        help='a split of a data set (--split), read from --data-dir or downloaded there when '
                             'absent (Fashion-MNIST also from /usr/share/datasets/fashion-mnist, see data.py)')
    source.add_argument('--folder', help='a folder of clean images (' + '/'.join(data.IMAGE_EXTENSIONS)
                        + ', its subfolders too, sorted by path)')
    source.add_argument('--image', nargs='+', help='clean image(s): degraded, then restored')
    source.add_argument('--observed', nargs='+', help='already degraded image(s) (low-res / gray): restored as is, no metrics')
    parser.add_argument('--data-dir', default='data')
    parser.add_argument('--split', default=None, choices=['test', 'train'],
                        help='--dataset split: test (default) to report; --tune always uses train')
    parser.add_argument('--n', type=cli.positive_int, default=100, help='first N images of --dataset / --folder')
    parser.add_argument('--sigma-y', type=cli.nonnegative_float, default=None,
                        help='observation noise std in 0-255 pixel units (25 means 25/255 of the range; '
                             'converted once to 2*sigma/255 in the [-1, 1] space of the model). Default: 25 for '
                             'denoise (which needs > 0), 0 for the other tasks; not given with --observed, whose images '
                             'already hold their noise')
    g = parser.add_argument_group('DRS settings (one value each; with --tune, the grid to search)')
    g.add_argument('--M', type=cli.positive_int, nargs='+',
                   help=f'DRS iterations (default: Table 6; --tune: {" ".join(map(str, TUNE_GRID["M"]))})')
    g.add_argument('--J', type=cli.positive_int, nargs=1, help='levels per iteration, J..1, at most K (default: Table 6; --tune: 1, not searched)')
    g.add_argument('--alpha', type=relaxation, nargs='+',
                   help=f'denoiser relaxation in (0, 1] (default: Table 6; --tune: {" ".join(map(str, TUNE_GRID["alpha"]))})')
    g.add_argument('--lam', type=cli.positive_float, nargs='+',
                   help=f'data-term weight of the prox (default: Table 6; --tune: {" ".join(map(str, TUNE_GRID["lam"]))})')
    parser.add_argument('--noise-scale', type=cli.nonnegative_float, default=0.99,
                        help='scale of the forward-process noise')
    parser.add_argument('--return-iterate', default='x', choices=ITERATES[:3],
                        help="DRS iterate returned: x (the authors'), y (denoised) or prox")
    parser.add_argument('--tune', action='store_true',
                        help='choose M, lambda, alpha on the first --n training images of --dataset: per task, '
                             'the --show best settings by mean PSNR, beside Table 6 and the baselines; prints, '
                             'writes nothing')
    parser.add_argument('--show', type=cli.positive_int, default=5, help='--tune: rows of each table (the best '
                        'settings; the rest of the grid is not printed)')
    parser.add_argument('--out', help='output folder (required unless --tune); one that holds files needs --overwrite')
    parser.add_argument('--overwrite', action='store_true',
                        help="replace an earlier run's outputs in --out (" + ', '.join(OUTPUTS) + ')')
    parser.add_argument('--device', default=cli.DEFAULT_DEVICE)
    parser.add_argument('--seed', type=cli.seed, default=0)
    parser.add_argument('--batch-size', type=cli.positive_int, default=100)
    return parser


if __name__ == '__main__':
    cli.run_main(main, build_parser().parse_args())
