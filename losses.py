"""RGM objectives: the data-fidelity term and the learned priors (paper Eqs. 5-8, Appendix B.2).

    L_G = lam * fidelity  +  g_phi(x_k_hat)                                       (Eq. 8)

with x0_hat = G(x_{k+1}, k, z) and x_k_hat its restoration at level k. The fidelity compares the
observation x_{k+1} with what the restoration predicts for it:
    Algorithm 2 (prior sampling, the default):  x_{k+1} against A_{k+1} x0_hat            `fidelity`
    Algorithm 1 (posterior sampling, RGM-D):    x_{k+1} against a_{k+1} x_k_hat,
                                                x_k_hat ~ q(x_k | x_{k+1}, x0_hat)         `posterior_fidelity`

For 'd' and 'sr_naive', `fidelity` is -log q(x_{k+1} | x0_hat) up to a constant. For 'sr' (separated
SR) it is a weighted squared error, not that log-likelihood: the residual is summed over the full-size
(nearest-upsampled) image, so each low-resolution pixel of level k+1 counts 4^{d(k+1)} times, and
the term is 4^{d(k+1)} times the exact one (d(k+1) = (k+1)//2 halvings, see schedules.SuperResolution).

The priors g_phi act on flat features (B, F): 2D points for the toy, discriminator
features for images. Scripts pick one through the registry `PRIORS`.

Two objectives without a prior, for baselines: `mmse_loss` (G predicts x0: the MMSE restorer) and
`ddpm_loss` (a network predicts the noise: the diffusion model, Ho et al. 2020, Eq. 14).
"""
import torch
import torch.nn.functional as F


def _per_sample(v, x):
    return v.view(-1, *([1] * (x.dim() - 1)))


# ----------------------------------------------------------------------------
# Data fidelity (Eq. 8): 1/2 || Sigma_{k+1}^{-1/2} (A_{k+1} x0_hat - x_{k+1}) ||^2, per sample
# (for 'sr', summed over the full-size image: see the module docstring).

def fidelity(x_next, x0_hat, k, schedule):
    """Algorithm 2 (prior sampling): compare x_{k+1} with the noiseless map of x0_hat."""
    mean = schedule.mean(x0_hat, k + 1)
    std = _per_sample(schedule.fidelity_std(k + 1), x_next)
    return 0.5 * ((x_next - mean) / std).pow(2).flatten(1).sum(1)            # (B,)


def posterior_fidelity(x_next, x_k_hat, k, schedule):
    """Algorithm 1 (posterior sampling, RGM-D): 1/2 ||(x_{k+1} - a_{k+1} x_k_hat) / sqrt(beta_{k+1})||^2."""
    a, beta = (_per_sample(c, x_next) for c in schedule.step_coefficients(k + 1))
    return 0.5 * ((x_next - a * x_k_hat) / beta.sqrt()).pow(2).flatten(1).sum(1)


def mmse_loss(x0_hat, x0):
    """The MMSE baseline's objective ||G(x_{k+1}, k) - x0||^2: its minimiser is E[x0 | x_{k+1}]."""
    return (x0_hat - x0).pow(2).flatten(1).sum(1)


def ddpm_loss(eps_hat, eps):
    """The diffusion baseline's objective (Ho et al. 2020, Eq. 14, the "simple" loss): ||eps_hat - eps||^2 per
    sample, where eps is the noise that made x_{k+1} = abar_{k+1} x0 + sigmabar_{k+1} eps, eps_hat =
    eps_net(x_{k+1}, k, None), and the caller draws k uniformly. A squared error is minimised, over functions
    of x_{k+1}, by the conditional mean: eps_hat = E[eps | x_{k+1}]. As x0 = (x_{k+1} - sigmabar_{k+1} eps) /
    abar_{k+1} is affine in eps given x_{k+1}, x0_hat = (x_{k+1} - sigmabar_{k+1} eps_hat) / abar_{k+1} is then
    E[x0 | x_{k+1}], the posterior mean: a diffusion model is an MMSE restorer. Indeed ||x0_hat - x0||^2 =
    (sigmabar_{k+1} / abar_{k+1})^2 ||eps_hat - eps||^2: this is `mmse_loss` weighted by (abar / sigmabar)^2."""
    if eps_hat.shape != eps.shape:
        raise ValueError(f'eps_hat and eps must have the same shape, got {tuple(eps_hat.shape)} '
                         f'and {tuple(eps.shape)}')
    return (eps_hat - eps).pow(2).flatten(1).sum(1)                          # (B,)


# ----------------------------------------------------------------------------
# KLD prior (Eq. 7): a non-saturating GAN; -D -> KL(q || p) as D becomes optimal.

def _logit(out):
    """Discriminators return a logit or (logit, features); give the logit as (B,)."""
    return (out[0] if isinstance(out, tuple) else out).reshape(-1)


class KLD:
    def __init__(self, r1_gamma=0.02, lazy_reg=15):
        self.r1_gamma = r1_gamma        # weight of the R1 penalty on real samples
        self.lazy_reg = lazy_reg        # apply R1 every `lazy_reg` D steps (not rescaled, as the authors)

    def discriminator_loss(self, D, x_k, x_k_hat, k, step=0):
        """softplus(-D(x_k)) + softplus(D(x_k_hat)) + r1/2 ||grad_x D(x_k)||^2; returns (loss, r1)."""
        use_r1 = self.r1_gamma > 0 and step % self.lazy_reg == 0
        x_k = x_k.detach().requires_grad_(use_r1)
        logit_real = _logit(D(x_k, k))
        loss = F.softplus(-logit_real).mean() + F.softplus(_logit(D(x_k_hat.detach(), k))).mean()
        r1 = x_k.new_zeros(())
        if use_r1:
            grad, = torch.autograd.grad(logit_real.sum(), x_k, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            loss = loss + self.r1_gamma / 2 * r1
        return loss, r1.detach()

    def generator_loss(self, D, x_k_hat, k):
        """g_phi(x_k_hat) = softplus(-D) - softplus(D) = -D(x_k_hat, k), per sample."""
        return -_logit(D(x_k_hat, k))


# ----------------------------------------------------------------------------
# MMD prior (Gretton et al. 2012): biased MMD^2 with a mixture of RBF kernels.

class _RBFMixtureSum(torch.autograd.Function):
    """sum_ij sum_s exp(-||x_i - y_j||^2 / (2 s^2)), with its gradient computed in the same pass.

    Plain autograd stores one (n, m) matrix per bandwidth and re-reads them all backwards;
    this walks x in row blocks, keeps O((n + m) F) memory and returns the exact gradient.
    With y = None it sums k(x_i, x_j) over the upper block triangle only (symmetry).
    Exponents are clamped at -60 (terms < 1e-26): float32 `exp` of very negative numbers
    is slow on CPUs and contributes nothing. The bandwidths are Python floats, so nothing is
    copied to the device (and the GPU is never waited for) inside the loop.
    """

    @staticmethod
    def forward(ctx, x, y, bandwidths, chunk):
        sym = y is None
        y = x if sym else y
        cs = [1.0 / (2.0 * s**2) for s in bandwidths]                        # exp(-c_s d), one per bandwidth
        need_grad = any(ctx.needs_input_grad[:2])
        total = x.new_zeros(())
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)
        y2 = y.pow(2).sum(1)
        for i in range(0, x.shape[0], chunk):
            xi = x[i:i + chunk]
            j0 = i if sym else 0                 # symmetric: columns from the diagonal block on
            yj = y[j0:]
            d = (xi.pow(2).sum(1, keepdim=True) + y2[j0:] - 2 * xi @ yj.T).clamp_min_(0)   # (b, m)
            e = [(d * -c).clamp_min_(-60.0).exp_() for c in cs]                           # S x (b, m)
            k_sum = sum(e)                                                                  # the mixture
            total += 2 * k_sum.sum() - k_sum[:, :len(xi)].sum() if sym else k_sum.sum()
            if need_grad:
                w = sum(c * e_s for c, e_s in zip(cs, e))  # -dk/dd, summed over bandwidths
                # d/dx_i sum_j k(d_ij) = -2 sum_j w_ij (x_i - y_j); and the mirror for y_j.
                gx[i:i + chunk] += -2 * (w.sum(1, keepdim=True) * xi - w @ yj)
                if sym:                           # the blocks right of the diagonal, mirrored
                    w, yj = w[:, len(xi):], yj[len(xi):]
                    gx[i + len(xi):] += -2 * (w.sum(0)[:, None] * yj - w.T @ xi)
                else:
                    gy += -2 * (w.sum(0)[:, None] * yj - w.T @ xi)
        if sym:
            gx = 2 * gx                           # x appears as both arguments
        ctx.sym = sym
        ctx.save_for_backward(gx, gy)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        gx, gy = ctx.saved_tensors
        return grad_out * gx, None if ctx.sym else grad_out * gy, None, None


class MMD:
    def __init__(self, bandwidths=(0.1, 0.5, 1.0, 2.0, 10.0), eps=1e-6, chunk=64):
        self.bandwidths = tuple(float(s) for s in bandwidths)            # toy; images {1,2,4,8,16}
        self.eps = eps                  # under the sqrt: its gradient is unbounded as MMD^2 -> 0
        self.chunk = chunk              # rows of the kernel matrix computed at once

    def kernel_sum(self, x, y=None):
        """sum_ij k(x_i, y_j); y = None means y = x."""
        return _RBFMixtureSum.apply(x.flatten(1), None if y is None else y.flatten(1),
                                    self.bandwidths, self.chunk)

    def mmd2(self, x, y):
        """Biased MMD^2_b = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)."""
        n, m = x.shape[0], y.shape[0]
        return (self.kernel_sum(x) / n**2 + self.kernel_sum(y) / m**2
                - 2 * self.kernel_sum(x, y) / (n * m))

    def __call__(self, x_real, x_fake):
        """g_phi = sqrt(relu(MMD^2) + eps) between real x_k and generated x_k_hat."""
        return torch.sqrt(F.relu(self.mmd2(x_real, x_fake)) + self.eps)


# ----------------------------------------------------------------------------
# DSWD prior (Nguyen et al. 2020): sliced Wasserstein along learned directions.

def sliced_wasserstein(x, y, theta, p=2):
    """SW_p = (mean_l sum_i |sort(x theta_l)_i - sort(y theta_l)_i|^p)^(1/p); theta is (L, F)."""
    px = torch.sort(x.flatten(1) @ theta.T, dim=0).values                    # (B, L)
    py = torch.sort(y.flatten(1) @ theta.T, dim=0).values
    # clamp: the p-th root has an infinite slope at 0 (identical sets would give NaN gradients)
    return (px - py).abs().pow(p).sum(0).mean().clamp_min(1e-12).pow(1.0 / p)


class DSWD:
    def __init__(self, transform, num_projections=10, p=2, C=10.0, inner_steps=10, lr=5e-4,
                 betas=(0.5, 0.999)):
        self.transform = transform      # f: maps unit directions to unit directions (TransformNet)
        self.num_projections = num_projections
        self.p, self.C, self.inner_steps = p, C, inner_steps
        # The defaults (lr 5e-4, betas (0.5, 0.999)) are Nguyen et al.'s; both trainers of this project
        # pass the authors' critic settings instead: D's learning rate and betas (0.5, 0.9).
        self.opt = torch.optim.Adam(transform.parameters(), lr=lr, betas=betas)

    def directions(self, dim, device, generator=None):
        theta = torch.randn(self.num_projections, dim, device=device, generator=generator)
        return theta / theta.norm(dim=1, keepdim=True)

    def fit(self, x_real, x_fake, theta):
        """Inner maximisation over f of SW_p(f(theta)) - C mean|cos(f(theta_i), f(theta_j))|."""
        x_real, x_fake = x_real.detach(), x_fake.detach()
        for _ in range(self.inner_steps):
            phi = self.transform(theta)
            cos = (phi @ phi.T).abs().mean()     # rows of phi have unit length
            loss = self.C * cos - sliced_wasserstein(x_real, x_fake, phi, self.p)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def __call__(self, x_real, x_fake, generator=None):
        """Fit the directions on detached samples, then SW_p along them (differentiable in x_fake)."""
        theta = self.directions(x_real.flatten(1).shape[1], x_real.device, generator)
        self.fit(x_real, x_fake, theta)
        with torch.no_grad():
            phi = self.transform(theta)
        return sliced_wasserstein(x_real, x_fake, phi, self.p)


PRIORS = {'kld': KLD, 'mmd': MMD, 'dswd': DSWD}
