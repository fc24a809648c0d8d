"""Image networks: FIR resampling against its definition, parity with the authors' networks
(stored fixture outputs), the checkpoint converter at full size, R1 double backward against
finite differences, bfloat16 autocast, and the behaviour the paper relies on (z and k matter)."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import parity_fixture_path
import models

FIXTURES = Path(__file__).resolve().parent / 'fixtures'      # data from the authors' networks (README there)


def _fixture(name):
    return parity_fixture_path() if name.endswith('.pt') else FIXTURES / name


@pytest.fixture(scope='module')
def parity():
    return torch.load(_fixture('authors_parity_tiny.pt'), weights_only=True)


def _perturbed(net, seed=0):
    """Add 0.02 N(0, 1) to every weight, so the near-zero initial layers (as the authors') matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p += 0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
    return net


def _tiny(G_kwargs=None, D_kwargs=None):
    torch.manual_seed(0)
    G, D = models.build_networks('tiny', G_kwargs, D_kwargs)
    return _perturbed(G).eval(), _perturbed(D, seed=1).eval()


# ---- FIR resampling --------------------------------------------------------

def _upfirdn_1d_matrix(n, up, down, pad, taps):
    """Dense matrix of upfirdn on a length-n signal, straight from its definition: insert up-1
    zeros after each sample, pad (pad[0], pad[1]) zeros, correlate with the taps, keep every
    down-th output. (The [1, 3, 3, 1] filter is symmetric, so correlation = convolution.)"""
    length = n * up + pad[0] + pad[1]
    rows = []
    for m in range(0, length - len(taps) + 1, down):
        row = [0.0] * n
        for j, tap in enumerate(taps):
            pos = m + j - pad[0]                        # position in the zero-stuffed signal
            if 0 <= pos < n * up and pos % up == 0:
                row[pos // up] += tap
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize('shape', [(2, 3, 8, 8), (1, 2, 6, 10)])
def test_fir_resampling_equals_upfirdn_definition(shape):
    x = torch.randn(shape, dtype=torch.float64)
    fir = models.fir_kernel().double()
    taps = [1 / 8, 3 / 8, 3 / 8, 1 / 8]                   # separable: the 2D filter is outer(taps, taps)
    H, W = shape[-2:]
    down_h, down_w = (_upfirdn_1d_matrix(n, 1, 2, (1, 1), taps) for n in (H, W))
    up_h, up_w = (_upfirdn_1d_matrix(n, 2, 1, (2, 1), [2 * t for t in taps]) for n in (H, W))
    torch.testing.assert_close(models.fir_downsample(x, fir), down_h @ x @ down_w.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(models.fir_upsample(x, fir), up_h @ x @ up_w.T, rtol=0, atol=1e-12)


# ---- parity with the authors' networks --------------------------------------

def test_generator_matches_authors(parity):
    if 'G_state_dict' not in parity:     # the 1 MB copy in git holds the discriminators; the generator's
        pytest.skip('the generator part of the parity data is in the full 4 MB file ($RGM_PARITY_FIXTURE)')
    G = models.NCSNpp(**models.CONFIGS['tiny']['G']).eval()
    assert sum(p.numel() for p in G.parameters()) == parity['G_num_parameters'] == 699_459
    G.load_state_dict(models.convert_authors_generator(G, parity['G_state_dict']))
    x, k, z = parity['G_inputs']['x'], parity['G_inputs']['t'], parity['G_inputs']['z']
    with torch.no_grad():
        torch.testing.assert_close(models.timestep_embedding(k, 16), parity['G_intermediates']['sinusoidal_t'],
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(G.map_z(z), parity['G_intermediates']['zemb'], rtol=0, atol=1e-5)
        torch.testing.assert_close(G(x, k, z), parity['G_output'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('suffix', ['', '_batch8'])       # batch 8: two strided minibatch-std groups
def test_discriminator_matches_authors(parity, suffix):
    D = models.Discriminator(**models.CONFIGS['tiny']['D']).eval()
    assert sum(p.numel() for p in D.parameters()) == parity['D_num_parameters'] == 195_889
    D.load_state_dict(models.convert_authors_discriminator(D, parity['D_state_dict']))
    with torch.no_grad():
        logit, features = D(parity[f'D_inputs{suffix}']['x'], parity[f'D_inputs{suffix}']['t'])
    torch.testing.assert_close(logit, parity[f'D_logit{suffix}'].squeeze(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(features, parity[f'D_features{suffix}'], rtol=0, atol=1e-5)


FULL_SIZE = [  # (configuration, network, authors' entry, authors' parameter count)
    ('cifar10', 'G', 'generator_cifar10_32', 48_432_515),
    ('celeba256', 'G', 'generator_celebahq_256', 39_726_979),
    ('cifar10', 'D', 'discriminator_small', 12_741_249),
    ('celeba256', 'D', 'discriminator_large', 27_736_833),
]


@pytest.mark.parametrize('config, which, entry, count', FULL_SIZE)
def test_converter_maps_authors_full_size_keys_one_to_one(config, which, entry, count):
    spec = json.loads(_fixture('authors_ncsnpp_keys.json').read_text())[entry]
    with torch.device('meta'):
        net = models.build_networks(config)[0 if which == 'G' else 1]
    convert = models.convert_authors_generator if which == 'G' else models.convert_authors_discriminator
    assert sum(p.numel() for p in net.parameters()) == spec['num_parameters'] == count
    theirs = {f'module.{e["key"]}': torch.empty(e['shape'], device='meta') for e in spec['state_dict']}
    ours = convert(net, theirs)                           # with the DataParallel prefix
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in net.state_dict().items()}
    net.load_state_dict(ours, assign=True)                # strict: no key missing or left over

    first = spec['state_dict'][0]['key']
    with pytest.raises(KeyError, match=first):            # a missing key is named
        convert(net, {k: v for k, v in theirs.items() if k != f'module.{first}'})
    last = spec['state_dict'][-1]
    with pytest.raises(ValueError, match=last['key']):    # a wrong shape is named
        convert(net, {**theirs, f'module.{last["key"]}': torch.empty([s + 1 for s in last['shape']], device='meta')})


@pytest.mark.parametrize('config', ['cifar10', 'celeba256'])
def test_generator_group_norms_use_min_quarter_channels_or_32_groups(config):
    with torch.device('meta'):
        G = models.build_networks(config)[0]
    norms = [m for m in G.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) > 50
    for m in norms:
        assert m.num_groups == min(m.num_channels // 4, 32) and m.eps == 1e-6
    assert {m.num_groups for m in norms} >= {32}          # the full configurations hit the cap
    assert models.CONFIGS['lsun256'] == models.CONFIGS['celeba256']


# ---- behaviour ------------------------------------------------------------------

@pytest.mark.parametrize('size, ch_mult, d_mult', [(32, (1, 2, 2, 2), (2, 4, 8, 8)),
                                                   (64, (1, 2, 2, 2), (2, 4, 8, 8)),
                                                   (256, (1, 1, 2, 2, 4, 4), (4, 8, 8, 8, 8, 8))])
def test_shapes(size, ch_mult, d_mult):
    G, D = _tiny(dict(image_size=size, channels=8, ch_mult=ch_mult, num_res_blocks=1),
                 dict(image_size=size, channels=4, ch_mult=d_mult))
    x, k = torch.randn(2, 3, size, size), torch.tensor([0, 3])
    with torch.no_grad():
        out = G(x, k, torch.randn(2, 8))
        logit, features = D(x, k)
    assert out.shape == x.shape and logit.shape == (2,) and features.shape == (2, 32, 4, 4)


def test_z_and_k_change_the_output_which_stays_in_range():
    G, _ = _tiny()
    x, k, z = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(4, 8)
    with torch.no_grad():
        out = G(x, k, z)
        assert (out - G(x, k, torch.randn(4, 8))).abs().mean() > 1e-2 * out.abs().mean()
        assert (out - G(x, k.flip(0), z)).abs().mean() > 1e-2 * out.abs().mean()
        assert G(100 * x, k, 100 * z).abs().max() <= 1
        assert G(x, k).shape == x.shape                       # z drawn when not given


def test_minibatch_std_groups_any_batch_with_stride():
    torch.manual_seed(0)
    for B, G in [(1, 1), (3, 3), (5, 1), (6, 3), (8, 4), (12, 4)]:
        x = torch.randn(B, 5, 4, 4)
        std = models.minibatch_std(x)[:, -1]                  # (B, 4, 4), constant per sample
        for i in range(B):                                    # sample i's group: j = i mod (B / G)
            group = x[[j for j in range(B) if j % (B // G) == i % (B // G)]]
            expected = (group.var(0, unbiased=False) + 1e-8).sqrt().mean()
            torch.testing.assert_close(std[i], expected.expand(4, 4))


def test_r1_double_backward_matches_finite_differences():
    """R1 = ||grad_x D(x, k)||^2; its gradient w.r.t. the weights (what training backpropagates)
    along a random direction v equals (R1(w + eps v) - R1(w - eps v)) / (2 eps)."""
    # Small, so that no LeakyReLU input crosses zero within +-eps (D is piecewise smooth).
    _, D = _tiny(D_kwargs=dict(image_size=8, channels=2, ch_mult=(2, 4), emb_dim=8))
    D = D.double()
    x, k = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    params = list(D.parameters())

    def r1():
        x_ = x.clone().requires_grad_()
        grad, = torch.autograd.grad(D(x_, k)[0].sum(), x_, create_graph=True)
        return grad.square().sum()

    grads = torch.autograd.grad(r1(), params, allow_unused=True, materialize_grads=True)  # the last bias has none
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, v)).item()

    def r1_at(step):                                      # R1 at w + step v
        with torch.no_grad():
            for p, d in zip(params, v):
                p += step * d
        value = r1().item()
        with torch.no_grad():
            for p, d in zip(params, v):
                p -= step * d
        return value

    eps = 1e-7
    numeric = (r1_at(eps) - r1_at(-eps)) / (2 * eps)
    assert analytic != 0
    assert abs(numeric - analytic) <= 1e-6 * abs(analytic)


def test_bfloat16_autocast_is_close_to_float32():
    G, D = _tiny()
    x, k, z = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(4, 8)
    with torch.no_grad():
        out, (logit, features) = G(x, k, z), D(x, k)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out16, (logit16, features16) = G(x, k, z), D(x, k)
    assert out16.dtype == logit16.dtype == torch.bfloat16
    for a, b in [(out16, out), (logit16, logit), (features16, features)]:
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().max() <= 0.05 * b.abs().max()


def test_channels_last_gives_the_same_outputs():
    G, D = _tiny()
    x, k, z = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(4, 8)
    with torch.no_grad():
        out, logit = G(x, k, z), D(x, k)[0]
        G, D, x = (t.to(memory_format=torch.channels_last) for t in (G, D, x))
        torch.testing.assert_close(G(x, k, z), out, rtol=0, atol=1e-5)
        torch.testing.assert_close(D(x, k)[0], logit, rtol=0, atol=1e-4)


def test_transform_net_rows_have_unit_length():
    net = models.TransformNet(dim=32)
    theta = net(torch.randn(10, 32))
    assert theta.shape == (10, 32)
    torch.testing.assert_close(theta.norm(dim=1), torch.ones(10))


@pytest.mark.skipif(os.environ.get('RGM_TEST_COMPILE') != '1',
                    reason='torch.compile of NCSN++ takes minutes on a CPU; set RGM_TEST_COMPILE=1 to run it')
def test_torch_compile_matches_eager():
    G, D = _tiny()
    x, k, z = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), torch.randn(4, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(G)(x, k, z), G(x, k, z), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.compile(D)(x, k)[0], D(x, k)[0], rtol=0, atol=1e-4)


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    G, D = models.build_networks('tiny')
    meta = dict(schedule='sr', K=7, discretisation='original', nz=8, image_size=32, channels=3, posterior=False)
    ckpt = dict(format=models.CKPT_FORMAT, G_kwargs=models.CONFIGS['tiny']['G'], D_kwargs=models.CONFIGS['tiny']['D'],
                meta=meta, G=G.state_dict(), G_ema=None, D=D.state_dict())
    path = tmp_path / 'run' / 'ckpt.pt'
    models.save_checkpoint(ckpt, path)
    assert [p.name for p in path.parent.iterdir()] == ['ckpt.pt']          # no temporary file left
    G2, meta2 = models.load_generator(path, ema=False)
    assert meta2 == meta
    x, k, z = torch.randn(2, 3, 32, 32), torch.tensor([0, 6]), torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(G.eval()(x, k, z), G2(x, k, z))
    with pytest.raises(KeyError, match='no EMA'):
        models.load_generator(path, ema=True)
    with pytest.raises(FileNotFoundError):
        models.load_generator(tmp_path / 'missing.pt')
    path.write_bytes(path.read_bytes()[:1000])                             # cut short
    with pytest.raises(RuntimeError, match='not a readable checkpoint'):
        models.load_checkpoint(path)
    torch.save({'netG': 1}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='not an rgm checkpoint'):
        models.load_checkpoint(tmp_path / 'other.pt')


# ---- initialisation: the authors' rule for each layer ----------------------------------------
# Their NCSN++ body uses DDPM's variance scaling with a true fan_avg; their StyleGAN-style helpers
# (mapping network, adaptive-group-norm style layers, every discriminator layer) compute fan_out
# instead. Written here from the layer's shape, independently of models._init.

def _authors_rule(net_name, name, module, zero_final=True):
    """(fan, scale) the authors' code uses for this layer."""
    if net_name == 'D':
        fan = 'out'
        scale = 1e-10 if name.endswith('conv2') or (name == 'conv_out' and zero_final) else 1.0
    else:
        fan = 'out' if name.startswith('map_z') or name.endswith('.style') else 'avg'
        scale = 1e-10 if name.endswith(('conv1', '.proj')) or name == 'conv_out' else 0.1 if name.endswith('.qkv') else 1.0
    return fan, scale


def _bound(w, fan, scale):
    area = math.prod(w.shape[2:])
    fan_in, fan_out = w.shape[1] * area, w.shape[0] * area
    return math.sqrt(3 * scale / (max(1, fan_out) if fan == 'out' else (fan_in + fan_out) / 2))


@pytest.mark.parametrize('config', ['tiny', 'cifar10_D', 'celeba256_D'])
def test_every_layer_starts_with_the_authors_bound(config):
    torch.manual_seed(0)
    base = config.split('_')[0]
    nets = dict(zip('GD', models.build_networks('tiny'))) if config == 'tiny' else \
        {'D': models.Discriminator(**models.CONFIGS[base]['D'])}
    zero_final = models.CONFIGS[base]['D']['zero_final']        # the small D starts final_conv at ~0, the large not
    checked = 0
    for net_name, net in nets.items():
        for name, module in net.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            fan, scale = _authors_rule(net_name, name, module, zero_final)
            chunks = module.weight.data.chunk(3) if name.endswith('.qkv') else [module.weight.data]
            for w in chunks:
                bound, top = _bound(w, fan, scale), w.abs().max().item()
                assert top <= bound * (1 + 1e-6), (config, name, top, bound)
                # a U(-a, a) sample of n values reaches 0.5 a with probability 1 - 2^-n
                assert top >= 0.5 * bound, (config, name, top, bound)
            if module.bias is not None:
                expected = torch.zeros_like(module.bias)
                if name.endswith('.style'):
                    expected[:module.bias.numel() // 2] = 1                        # gamma starts at 1
                assert torch.equal(module.bias, expected), name
            checked += 1
    assert checked > 10


def test_the_four_layers_the_review_measured():
    """Bounds the authors' networks start with (measured on their code): D's final Linear(512, 1)
    sqrt(3) = 1.73, D's first conv 3 -> 128 sqrt(3/128) = 0.153, the mapping Linear(100, 256)
    sqrt(3/256) = 0.108, a style Linear(256, 1024) sqrt(3/1024) = 0.054."""
    torch.manual_seed(0)
    D = models.Discriminator(**models.CONFIGS['cifar10']['D'])
    top = lambda layer: layer.weight.detach().abs().max().item()
    assert top(D.linear_out) == pytest.approx(1.732, rel=0.05)
    assert top(D.conv_in) == pytest.approx(0.153, rel=0.05)
    mapping = models.NCSNpp(image_size=32, channels=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                            nz=100, z_emb_dim=256, n_mlp=1)
    assert top(mapping.map_z[1]) == pytest.approx(0.108, rel=0.02)
    style = models.AdaGN(512, 256).style
    assert top(style) == pytest.approx(0.054, rel=0.02)
