"""Forward (degradation) processes of RGM and their posteriors (paper Section 3.2, Appendix B.1, Table 5).

A forward process maps clean data x0 to level k in {0..K}: level 0 is clean, level K is
(almost) the start distribution. Every class offers the same interface:

    mean(x0, k)             the noiseless map of x0 to level k        A_k x0
    std(k)                  per-pixel noise std at level k, shape (B,)
    sample(x0, k, noise)    a draw from the marginal q(x_k | x0)
    fidelity_std(k)         the std that the fidelity term divides by (Eq. 8)
    prior_sample(shape)     the start distribution of sampling, for level K

`k` is an int64 tensor of shape (B,) (one level per sample) or a Python int (one level for
the whole batch; `std`, `fidelity_std` and the coefficient methods then return 0-dim tensors).
Levels on the CPU are checked on every call; on a GPU they are not (reading them would stall
the device), so the scripts check their inputs where they enter.
Scripts pick a process through the registry `SCHEDULES`.

The tables, index n = 0..N over the noise levels (N = K, or (K+1)//2 for 'sr'), paper notation:

    beta_n                  the VP-SDE variance of one forward step, beta_0 = 1e-8 (a placeholder)
    a_n = sqrt(1 - beta_n)  the signal scale of one step,  q(x_n | x_{n-1}) = N(a_n x_{n-1}, beta_n I)
    abar_n = a_1 ... a_n    the paper's \bar{alpha}'_n, the signal scale of the marginal
                            q(x_n | x0) = N(abar_n x0, sigmabar_n^2 I)   (A_n = abar_n I for RGM-D)
    sigmabar_n = sqrt(1 - abar_n^2)   its noise std

(DDPM's "alpha-bar", the product of the (1 - beta), is abar_n^2 here; it appears nowhere under
its own name.) At N = 1000 the 'original' betas run from 1.3e-4 to 0.0198, close to DDPM's linear
1e-4 .. 0.02.

Samplers: `sample_rgm` (Algorithm 3, K evaluations of G) and, for a diffusion baseline on the 'd'
process with a noise-predicting network called like G, `sample_ddpm` (K evaluations) and
`sample_ddim` (`steps` evaluations, on the levels `ddim_levels(K, steps)`).
"""

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# VP-SDE noise schedule (Song et al. 2021), Appendix B.1, Table 5.

def vp_coefficients(N, discretisation='original', beta_min=0.1, beta_max=20.0, eps=1e-3):
    """Coefficient tables for N noise levels, float32, index n = 0..N."""
    def vp_var(s):
        return 1 - torch.exp(-0.5 * s**2 * (beta_max - beta_min) - s * beta_min)

    u = torch.arange(N + 1, dtype=torch.float64) / N
    s = u * (1 - eps) + eps
    if discretisation == 'original':
        var = vp_var(s)
    elif discretisation == 'square':
        var = vp_var(s**2)
    elif discretisation == 'geometric':
        # Deviation: the authors' var = beta_min (beta_max / beta_min)^s exceeds 1 for their
        # default betas (NaN tables). We space the variance geometrically between the
        # endpoints of the 'original' schedule instead.
        v0, v1 = vp_var(s[:1]), vp_var(s[-1:])
        var = v0 * (v1 / v0) ** u
    else:
        raise ValueError(f"unknown discretisation {discretisation!r}: "
                         "choose 'original', 'square' or 'geometric'")
    signal_power = 1 - var                                      # abar_n^2, in float64
    beta = torch.cat([torch.tensor([1e-8], dtype=torch.float64),
                      1 - signal_power[1:] / signal_power[:-1]]).float()
    # Like the authors, the tables are float32 from here on: sqrt(1 - 1e-8) rounds to 1,
    # so level 0 is exactly clean (abar_0 = 1, sigmabar_0 = 0).
    a = torch.sqrt(1 - beta)                                    # per-step signal scale a_n
    abar = torch.cumprod(a, 0)                                  # abar'_n = prod_{j<=n} a_j
    sigmabar = torch.sqrt(1 - abar**2)                          # marginal noise std
    return dict(beta=beta, a=a, abar=abar, sigmabar=sigmabar)


def _levels(k, K, batch, device):
    """Check the level(s) k and return them as an int64 tensor of shape (batch,). The values are
    checked for a Python int and for CPU tensors; a GPU tensor's values are not read (no sync)."""
    if not torch.is_tensor(k):
        if not 0 <= int(k) <= K:
            raise ValueError(f'level k must lie in 0..{K}, got {k}')
        return torch.full((batch,), int(k), dtype=torch.long, device=device)
    if k.dim() != 1 or k.shape[0] != batch:
        raise ValueError(f'k must have shape ({batch},), got {tuple(k.shape)}')
    if k.device.type == 'cpu' and k.numel() and not torch.compiler.is_compiling():
        low, high = int(k.min()), int(k.max())
        if low < 0 or high > K:
            raise ValueError(f'level k must lie in 0..{K}, got values in {low}..{high}')
    return k.long()


def _expand(v, x):
    """(B,) -> (B, 1, ..., 1), broadcastable against x."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def block_average(x, d, max_d=None):
    """P_d: d times 2x2 block averaging, nearest-upsampled back to full size; d is (B,). `max_d`
    (a Python int, the schedule's number of halvings) bounds d without reading it from the tensor."""
    if max_d is None:
        max_d = int(d.max()) if d.numel() else 0
    out = x
    for j in range(1, max_d + 1):
        f = 2**j
        pooled = F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode='nearest')
        out = torch.where(_expand(d == j, x), pooled, out)
    return out


class _Schedule:
    """What every forward process shares: levels, the VP tables, sampling."""
    halvings = 0        # how many times the image side is halved at level K

    def __init__(self, K=4, discretisation='original'):
        if int(K) != K or K < 1:
            raise ValueError(f'K (number of degradation steps) must be an integer >= 1, got {K}')
        self.K = int(K)
        self.discretisation = discretisation
        self._set_tables(vp_coefficients(self.num_noise_levels, discretisation))

    def _set_tables(self, tables):
        self.tables = tables                    # also readable as attributes: self.abar, self.sigmabar, ...
        for name, v in tables.items():
            setattr(self, name, v)

    def to(self, device):
        """Keep the tables on `device` (as a module's buffers): then looking them up for data on that
        device copies nothing. Returns self."""
        self._set_tables({name: v.to(device) for name, v in self.tables.items()})
        return self

    num_noise_levels = property(lambda self: self.K)

    def levels(self, k, x):
        return _levels(k, self.K, x.shape[0], x.device)

    def check_shape(self, shape):
        """Raise a clear error if images of this shape cannot go through the process."""
        if self.halvings == 0:
            return
        if len(shape) != 4:
            raise ValueError(f'{type(self).__name__} works on images (B, C, H, W), got shape {tuple(shape)}')
        f = 2**self.halvings
        if shape[-1] % f or shape[-2] % f:
            raise ValueError(f'{type(self).__name__} with K={self.K} halves the image {self.halvings} '
                             f'times: its side must be divisible by {f}, got {shape[-2]}x{shape[-1]}')

    def _table(self, name, n, x=None):
        """Table entries at index n (a (B,) tensor, or a Python int: a 0-dim result)."""
        table = getattr(self, name)
        v = table[n] if not torch.is_tensor(n) else table.to(n.device)[n]
        return v if x is None else _expand(v, x)

    def sample(self, x0, k, noise=None, noise_scale=1.0):
        """x_k ~ q(x_k | x0). `noise` is a standard normal tensor shaped like x0."""
        k = self.levels(k, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        return self.mean(x0, k) + noise_scale * self._noise(noise, k)

    def prior_sample(self, shape, device=None, generator=None):
        """The start distribution of Algorithm 3: the level-K noise, std(K) per low-resolution pixel,
        returned full size (constant on the 2^d x 2^d blocks of the level-K resolution)."""
        self.check_shape(shape)
        n = torch.randn(shape, device=device, generator=generator)
        k = torch.full((shape[0],), self.K, dtype=torch.long, device=device)
        return self._noise(n, k)


# ----------------------------------------------------------------------------
# RGM-D: Gaussian denoising, A_k = abar'_k I, N = K.

class Denoising(_Schedule):
    """x_k = abar'_k x0 + sigmabar_k eps, for points (B, D) or images (B, C, H, W)."""

    def mean(self, x0, k):
        return self._table('abar', self.levels(k, x0), x0) * x0

    def std(self, k):
        return self._table('sigmabar', k)

    def fidelity_std(self, k):
        return self.std(k)

    def _noise(self, noise, k):
        return self._table('sigmabar', k, noise) * noise

    def prior_sample(self, shape, device=None, generator=None):
        # The authors start from N(0, I) (sigmabar_K = 1.0000 in float32 for K = 4).
        return torch.randn(shape, device=device, generator=generator)

    # -- Algorithm 1: DDPM posterior with betas beta_1..beta_K (beta_0 dropped). --

    def step_coefficients(self, k):
        """a_k and beta_k of one forward step q(x_k | x_{k-1}) = N(a_k x_{k-1}, beta_k I), each (B,)."""
        return self._table('a', k), self._table('beta', k)

    def posterior_coefficients(self, k):
        """c1_k, c2_k, v_k of q(x_k | x_{k+1}, x0) = N(c1 x0 + c2 x_{k+1}, v), each (B,) (or 0-dim).

        Bayes' rule on the Gaussians q(x_k | x0) = N(abar_k x0, sigmabar_k^2) and the step
        q(x_{k+1} | x_k) = N(a_{k+1} x_k, beta_{k+1}) (the DDPM posterior, Ho et al. 2020, Eq. 7):
            c1 = abar_k beta_{k+1} / sigmabar_{k+1}^2,   c2 = a_{k+1} sigmabar_k^2 / sigmabar_{k+1}^2,
            v  = beta_{k+1} sigmabar_k^2 / sigmabar_{k+1}^2.
        The step *into* level k+1 is table entry k+1. At k = 0, sigmabar_0 = 0 gives c2 = v = 0 and
        c1 = abar_0 beta_1 / sigmabar_1^2 = 1 (abar_0 = 1 and sigmabar_1^2 = beta_1), so x_0 = x0_hat. (The authors form the same numbers from cumprod(1 - beta_{1..K}),
        which is abar^2 one index up; equal up to float32 rounding.)"""
        a, beta = self._table('a', k + 1), self._table('beta', k + 1)
        abar, var, var_next = self._table('abar', k), self._table('sigmabar', k) ** 2, self._table('sigmabar', k + 1) ** 2
        return abar * beta / var_next, a * var / var_next, beta * var / var_next

    def posterior_sample(self, x0, x_next, k, noise=None):
        """x_k ~ q(x_k | x_{k+1}, x0); no noise is added at k = 0."""
        k = _levels(k, self.K - 1, x0.shape[0], x0.device)
        c1, c2, v = (_expand(c, x0) for c in self.posterior_coefficients(k))
        if noise is None:
            noise = torch.randn_like(x0)
        nonzero = _expand((k > 0).to(x0.dtype), x0)
        return c1 * x0 + c2 * x_next + nonzero * v.sqrt() * noise


# ----------------------------------------------------------------------------
# RGM-SR (naive): A_k = abar'_k P_k, N = K; the side halves at every level.

class SuperResolutionNaive(_Schedule):
    """x_k = P_k (abar'_k x0 + sigmabar_k eps); images (B, C, H, W) only."""
    halvings = property(lambda self: self.K)

    def mean(self, x0, k):
        self.check_shape(x0.shape)
        k = self.levels(k, x0)
        return self._table('abar', k, x0) * block_average(x0, k, self.K)

    def std(self, k):
        # Block-averaging 4^k independent pixels divides the noise std by 2^k.
        return self._table('sigmabar', k) / 2.0**k

    def fidelity_std(self, k):
        # The authors divide by sigmabar_k over the full-size image, where each low-res
        # pixel appears 4^k times: that equals the exact likelihood with std sigmabar_k / 2^k
        # on the low-resolution image.
        return self._table('sigmabar', k)

    def _noise(self, noise, k):
        return self._table('sigmabar', k, noise) * block_average(noise, k, self.K)


# ----------------------------------------------------------------------------
# RGM-SR (separated): odd k adds noise, even k halves the side; N = (K+1)//2.

class SuperResolution(_Schedule):
    """x_k = P_{d(k)} (abar_{n(k)} x0 + 2^{n(k)} sigmabar_{n(k)} eps), n(k) = (k+1)//2, d(k) = k//2.

    Odd k adds noise (n grows, d stays), even k halves the side (d grows): K = 7 at 32 px goes
    32 -> 32 (noise) -> 16 -> 16 (noise) -> 8 -> ... -> 4. Why the 2^n pre-scale of the noise:
    averaging a 2x2 block of independent pixels halves the noise std, so after d averagings the
    noise of each low-resolution pixel is 2^(n - d) sigmabar_n. At even k (d = n) that is exactly
    sigmabar_n: the low-resolution image abar_n P_n x0 + sigmabar_n eps is the VP process's marginal
    at that resolution. At odd k (d = n - 1) the new noise is drawn at twice that std, and the next
    halving brings it down to sigmabar_n. The start distribution is therefore noise of std
    std(K) per low-resolution pixel (2 sigmabar_N for odd K, sigmabar_N for even K)."""
    halvings = property(lambda self: self.K // 2)
    num_noise_levels = property(lambda self: (self.K + 1) // 2)

    def mean(self, x0, k):
        self.check_shape(x0.shape)
        k = self.levels(k, x0)
        return self._table('abar', (k + 1) // 2, x0) * block_average(x0, k // 2, self.halvings)

    def std(self, k):
        # 2^n sigmabar_n, averaged over 4^d pixels: 2 sigmabar_n for odd k, sigmabar_n for even k.
        n = (k + 1) // 2
        return self._table('sigmabar', n) * 2.0 ** (n - k // 2)

    def fidelity_std(self, k):
        # As the authors: this std, summed over the full-size (nearest-upsampled) image, so
        # each low-resolution pixel counts 4^d(k) times (a weight the exact likelihood lacks).
        return self.std(k)

    def _noise(self, noise, k):
        n = (k + 1) // 2
        scale = self._table('sigmabar', n, noise) * _expand(2.0**n, noise)
        return scale * block_average(noise, k // 2, self.halvings)


SCHEDULES = {'d': Denoising, 'sr_naive': SuperResolutionNaive, 'sr': SuperResolution}


def make_schedule(name, K=4, discretisation='original'):
    """Build a forward process by its registry name."""
    if name not in SCHEDULES:
        raise ValueError(f'unknown forward process {name!r}: choose one of {sorted(SCHEDULES)}')
    return SCHEDULES[name](K=K, discretisation=discretisation)


def schedule_of(meta, device='cpu'):
    """The forward process a checkpoint was trained with (its meta: schedule, K, discretisation),
    with its tables on `device`."""
    return make_schedule(meta['schedule'], meta['K'], meta['discretisation']).to(device)


# ----------------------------------------------------------------------------
# Algorithm 3: sampling with K network evaluations.

@torch.no_grad()
def sample_rgm(G, schedule, shape, nz, device=None, posterior=False, noise_scale=0.999,
               generator=None, trajectory=False):
    """Run Algorithm 3 from the start distribution; returns x_0 (or [x_K, ..., x_0])."""
    x = schedule.prior_sample(shape, device=device, generator=generator)
    xs = [x]
    for k in reversed(range(schedule.K)):
        k_ = torch.full((shape[0],), k, dtype=torch.long, device=x.device)
        z = torch.randn(shape[0], nz, device=x.device, generator=generator) if nz > 0 else None
        x0_hat = G(x, k_, z)                # G sees x_{k+1} and is told the target level k
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        if posterior:                       # Algorithm 1 models: x_k ~ q(x_k | x_{k+1}, x0_hat)
            x = schedule.posterior_sample(x0_hat, x, k_, noise=noise)
        else:                               # Algorithm 3, line 5: push x0_hat back to level k
            x = schedule.sample(x0_hat, k_, noise=noise, noise_scale=noise_scale)
        xs.append(x)
    return xs if trajectory else x


# ----------------------------------------------------------------------------
# A diffusion baseline on the 'd' process: a noise-predicting network eps_net, called exactly
# as G is, eps_hat = eps_net(x_{k+1}, k, None), and trained by losses.ddpm_loss. DDPM's t = k + 1.

def _check_eps_sampling(schedule):
    if not isinstance(schedule, Denoising):
        raise ValueError(f"schedule: DDPM/DDIM sampling needs the 'd' process (Denoising), "
                         f"got {type(schedule).__name__}")


def _on(v, x):
    """A 0-dim coefficient for use with x: a CPU one is a scalar to every device (no copy)."""
    return v if v.device.type == 'cpu' or v.device == x.device else v.to(x.device)


def _at(schedule, name, t, x):
    """Table entry `name` at level t (a Python int: the whole batch is at one level), 0-dim, usable with x."""
    return _on(schedule._table(name, t), x)


def _x0_from_eps(schedule, x, eps_hat, t, clip_x0):
    """x0_hat = (x_t - sigmabar_t eps_hat) / abar_t: the marginal x_t = abar_t x0 + sigmabar_t eps (Ho et al.
    2020, Eq. 4) solved for x0 with the predicted noise (their Eq. 15); clamped to [-1, 1] if `clip_x0`."""
    x0_hat = (x - _at(schedule, 'sigmabar', t, x) * eps_hat) / _at(schedule, 'abar', t, x)
    return x0_hat.clamp(-1, 1) if clip_x0 else x0_hat


@torch.no_grad()
def sample_ddpm(eps_net, schedule, shape, device=None, generator=None, trajectory=False, clip_x0=False):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) with NFE = K; returns x_0 (or [x_K, ..., x_0]).

    From x_K ~ N(0, I), for k = K-1 .. 0:
        x0_hat = (x_{k+1} - sigmabar_{k+1} eps_hat) / abar_{k+1},   eps_hat = eps_net(x_{k+1}, k, None)
        x_k ~ q(x_k | x_{k+1}, x0_hat) = N(c1 x0_hat + c2 x_{k+1}, v)   (`Denoising.posterior_coefficients`)
    Substituting x0_hat, the mean is Ho's Eq. 11, (x_{k+1} - beta_{k+1} / sigmabar_{k+1} eps_hat) / a_{k+1},
    and the variance is his posterior choice sigma_t^2 = beta_t sigmabar_{t-1}^2 / sigmabar_t^2 (not beta_t);
    no noise at k = 0. `clip_x0` clamps x0_hat to [-1, 1] (images) before the step; off by default,
    so that an exact eps-predictor gives exactly the DDPM chain."""
    _check_eps_sampling(schedule)
    x = schedule.prior_sample(shape, device=device, generator=generator)       # x_K ~ N(0, I)
    xs = [x]
    for k in reversed(range(schedule.K)):
        k_ = torch.full((shape[0],), k, dtype=torch.long, device=x.device)     # the net sees x_{k+1}, told k
        x0_hat = _x0_from_eps(schedule, x, eps_net(x, k_, None), k + 1, clip_x0)   # Eq. 15
        c1, c2, v = (_on(c, x) for c in schedule.posterior_coefficients(k))    # Eq. 7, 0-dim
        x = c1 * x0_hat + c2 * x                                                # the mean, = Eq. 11
        if k > 0:                                                               # no noise at the last step
            x = x + v.sqrt() * torch.randn(x.shape, device=x.device, generator=generator)
        xs.append(x)
    return xs if trajectory else x


def ddim_levels(K, steps):
    """The S + 1 levels DDIM visits (S = steps), K = t_S > ... > t_1 > t_0 = 0, as a list of ints:
    t_i = round(i K / S) (halves rounded up), evenly spaced in K / S >= 1, so integer and strictly
    decreasing; always from K (the start noise) to the clean level 0; S = K gives every level."""
    if isinstance(K, bool) or int(K) != K or K < 1:
        raise ValueError(f'K (number of levels) must be an integer >= 1, got {K}')
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= K:
        raise ValueError(f'steps (DDIM network evaluations) must be an integer in 1..{int(K)}, got {steps}')
    K, S = int(K), int(steps)
    return [(2 * i * K + S) // (2 * S) for i in range(S, -1, -1)]            # floor(i K / S + 1/2)


@torch.no_grad()
def sample_ddim(eps_net, schedule, shape, steps, device=None, generator=None, trajectory=False,
                clip_x0=False):
    """DDIM with eta = 0 (Song, Meng, Ermon 2021, Eq. 12) with NFE = steps, on `ddim_levels(K, steps)`;
    deterministic given the start noise x_K ~ N(0, I) (the generator draws only that).
    Returns x_0 (or [x_{t_S}, ..., x_{t_0}]). From level t to the next level t' < t:
        x0_hat = (x_t - sigmabar_t eps_hat) / abar_t,   eps_hat = eps_net(x_t, t - 1, None)
        x_{t'} = abar_{t'} x0_hat + sigmabar_{t'} eps_hat
    `clip_x0` clamps x0_hat to [-1, 1] and re-derives eps_hat = (x_t - abar_t x0_hat) / sigmabar_t from it,
    so the step stays on the line through x_t and the clamped x0_hat; off by default."""
    _check_eps_sampling(schedule)
    levels = ddim_levels(schedule.K, steps)
    x = schedule.prior_sample(shape, device=device, generator=generator)       # x_K ~ N(0, I)
    xs = [x]
    for t, t_next in zip(levels[:-1], levels[1:]):
        k_ = torch.full((shape[0],), t - 1, dtype=torch.long, device=x.device)  # the net sees x_t, told t - 1
        eps_hat = eps_net(x, k_, None)
        x0_hat = _x0_from_eps(schedule, x, eps_hat, t, clip_x0)                 # Eq. 12, "predicted x0"
        if clip_x0:                                                             # the noise it implies
            eps_hat = (x - _at(schedule, 'abar', t, x) * x0_hat) / _at(schedule, 'sigmabar', t, x)
        x = schedule.sample(x0_hat, t_next, noise=eps_hat)   # Eq. 12: the marginal at t' with the same noise
        xs.append(x)
    return xs if trajectory else x
