"""KID and precision / recall (metrics.kid, metrics.precision_recall) against answers found without them:
a brute-force unbiased MMD^2 in plain Python, the closed form of KID on identical sets, the bias of the
V-statistic in closed form, a 1-D example worked by hand, and cluster constructions whose precision and
recall follow from symmetry; then the new keys of metrics.fashion_scores on a tiny untrained classifier."""
import itertools
import math

import pytest
import torch

import metrics


def cubic_kernel(a, b):
    """k(x, y) = (x.y / F + 1)^3 for batches (..., n, F) x (..., m, F) -> (..., n, m)."""
    return (a @ b.transpose(-1, -2) / a.shape[-1] + 1) ** 3


def u_and_v_statistics(x, y):
    """Unbiased MMD^2 (within-set sums over i != j) and the biased V-statistic (all i, j), batched."""
    n = x.shape[-2]
    kxx, kyy, kxy = cubic_kernel(x, x), cubic_kernel(y, y), cubic_kernel(x, y)
    off = lambda k: (k.sum((-1, -2)) - k.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    u = off(kxx) + off(kyy) - 2 * kxy.mean((-1, -2))
    v = kxx.mean((-1, -2)) + kyy.mean((-1, -2)) - 2 * kxy.mean((-1, -2))
    return u, v


# ---- KID ------------------------------------------------------------------------------------------

def test_kid_matches_a_brute_force_unbiased_estimator():
    """With subset_size = N on both sides every subset is the whole set (in some order), so the mean is
    MMD^2_u of the two sets, here summed pair by pair in plain Python floats, and the std is 0."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 5, generator=g).double(), (torch.randn(9, 5, generator=g) * 1.3 + 1.5).double()
    xs, ys = x.tolist(), y.tolist()
    k = lambda a, b: (sum(p * q for p, q in zip(a, b)) / 5 + 1) ** 3
    m = len(xs)
    brute = (sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
             + sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
             - 2 * sum(k(a, b) for a in xs for b in ys) / m ** 2)
    mean, std = metrics.kid(x, y, subsets=3, subset_size=9)
    assert brute > 0.05                                    # a case where the two sets differ
    assert mean == pytest.approx(brute, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_kid_subset_size_shrinks_to_the_smaller_set():
    """The rule m = min(subset_size, N_1, N_2): asking for 1000 on sets of 12 and 9 is asking for 9, and
    each estimate is MMD^2_u of a 9-subset of the 12 against all 9 (the mean lies among those 220)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, generator=g).double(), (torch.randn(9, 3, generator=g) + 0.5).double()
    assert metrics.kid(x, y, subsets=20, subset_size=1000, seed=3) == metrics.kid(x, y, subsets=20, subset_size=9,
                                                                                seed=3)
    all_subsets = torch.tensor(list(itertools.combinations(range(12), 9)))     # (220, 9)
    u, _ = u_and_v_statistics(x[all_subsets], y.expand(len(all_subsets), 9, 3))
    mean, std = metrics.kid(x, y, subsets=20, subset_size=9, seed=3)
    assert u.min() - 1e-12 <= mean <= u.max() + 1e-12 and 0 < std <= (u.max() - u.min()) / 2
    assert metrics.kid(x, y, subsets=20, seed=3) != metrics.kid(x, y, subsets=20, seed=4)   # seed = subsets


def test_kid_of_identical_sets_is_its_closed_form_near_zero():
    """Set 1 = set 2 = X (N points). With subset_size = N both subsets are X, and
    MMD^2_u = 2 A_off - 2 ((N-1) A_off + A_diag) / N = 2 (A_off - A_diag) / N exactly, with A_off, A_diag
    the means of k over distinct and equal pairs: <= 0 and O(1/N). With subsets of m < N this is the
    expected value of each estimate; the mean over S subsets is within 4 std / sqrt(S) of it."""
    g = torch.Generator().manual_seed(2)
    n = 1000
    x = torch.randn(n, 16, generator=g).double().relu()
    kxx = cubic_kernel(x, x)
    a_diag, a_off = kxx.diagonal().mean(), (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    closed = (2 * (a_off - a_diag) / n).item()
    mean, std = metrics.kid(x, x, subsets=2, subset_size=n)
    assert mean == pytest.approx(closed, rel=1e-9) and std < 1e-12
    far, _ = metrics.kid(x, x + 0.3, subsets=2, subset_size=n)
    assert closed < 0 and abs(closed) < 0.02 * far           # "~ 0": against a set shifted by 0.3
    S = 400
    mean, std = metrics.kid(x, x, subsets=S, subset_size=50, seed=1)
    assert abs(mean - closed) < 4 * std / S ** 0.5


def test_kid_is_unbiased_where_the_v_statistic_is_not():
    """Two independent samples of N(0, I_4). MMD^2_u has mean 0; the V-statistic (which keeps i = j) has
    mean 2 (E k(x, x) - E k(x, x')) / m: with s = |x|^2 / 4 (E s = 1, E s^2 = 3/2, E s^3 = 3),
    E k(x, x) = E (s + 1)^3 = 11.5, and with t = x.x' / 4 (E t = E t^3 = 0, E t^2 = 1/4),
    E k(x, x') = 1 + 3/4 = 1.75: 1.95 at m = 10.
    (a) fresh pairs of sets of m = 10, each through kid (its subset is the whole set): the mean is 0
    within 4 standard errors, the V-statistic of the same sets its closed form, far from 0.
    (b) many small subsets of two fixed pools of 2000: given the pools, each estimate has as expectation
    MMD^2_u of the pools themselves (computed here in full); the mean over subsets lies within 4 std /
    sqrt(S) of it, and both are ~ 0."""
    g = torch.Generator().manual_seed(3)
    d, m, S = 4, 10, 1000
    x, y = torch.randn(S, m, d, generator=g).double(), torch.randn(S, m, d, generator=g).double()
    u = torch.tensor([metrics.kid(x[s], y[s], subsets=1, subset_size=m)[0] for s in range(S)], dtype=torch.float64)
    u_ref, v = u_and_v_statistics(x, y)
    assert torch.allclose(u, u_ref, rtol=1e-9, atol=1e-12)
    se_u, se_v = u.std() / S ** 0.5, v.std() / S ** 0.5
    assert abs(u.mean()) < 4 * se_u
    assert abs(v.mean() - 2 * (11.5 - 1.75) / m) < 4 * se_v and v.mean() > 20 * se_v
    pool_x, pool_y = torch.randn(2000, d, generator=g).double(), torch.randn(2000, d, generator=g).double()
    u_pools, _ = u_and_v_statistics(pool_x, pool_y)
    mean, std = metrics.kid(pool_x, pool_y, subsets=S, subset_size=m, seed=0)
    assert abs(mean - u_pools) < 4 * std / S ** 0.5 and abs(u_pools) < 0.05


# ---- precision and recall -------------------------------------------------------------------------

def test_precision_recall_by_hand_in_one_dimension():
    """reference {0, 1, 2.5, 4, 8}, generated {0, .5, 1, 1.5} and {20, 21, 22, 23}.
    k = 3: reference radii 4, 3, 2.5, 4, 7 (k-th distance to the others) -> manifold [-4, 15]: the first
    four generated points are in, precision 4/8; generated radii 1.5, 1, 1, 1.5 and 3, 2, 2, 3 ->
    [-1.5, 3] u [17, 26]: reference 0, 1, 2.5 are in, recall 3/5.
    k = 1: reference radii 1, 1, 1.5, 1.5, 4 -> [-1, 12]: precision 4/8; generated radii 0.5 (first
    group), 1 (second) -> [-0.5, 2] u [19, 24]: reference 0, 1 in, recall 2/5. (Had a point counted
    itself, the k = 1 radii would be 0 and precision 2/8.)"""
    ref = torch.tensor([0., 1., 2.5, 4., 8.])[:, None]
    gen = torch.tensor([0., .5, 1., 1.5, 20., 21., 22., 23.])[:, None]
    assert metrics.precision_recall(gen, ref, k=3) == (4 / 8, 3 / 5)
    assert metrics.precision_recall(gen, ref, k=1) == (4 / 8, 2 / 5)
    assert metrics.PRC_K == 3 and metrics.precision_recall(gen, ref) == (4 / 8, 3 / 5)


def test_identical_sets_have_precision_and_recall_one():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(4)).double()
    assert metrics.precision_recall(x, x) == (1.0, 1.0)


def four_clusters(generator, n=500):
    """Reference: n points of N(c, I) around each of 4 centres 20 apart in 2-D (4n points)."""
    centres = torch.tensor([[0., 0.], [20., 0.], [0., 20.], [20., 20.]])
    return (centres[:, None] + torch.randn(4, n, 2, generator=generator)).reshape(-1, 2).double(), centres


def test_samples_from_one_of_four_clusters_have_high_precision_and_a_quarter_of_the_recall():
    """Generated points confined to the first of 4 equal clusters. (a) They are that cluster's reference
    points: each is a reference point (distance 0 <= its radius) and is its own ball, so precision = 1 and
    recall = n / 4n = 1/4 exactly. (b) They are n fresh draws of that cluster: no generated ball (radius a
    few units) reaches the other clusters 20 away, so recall <= 1/4; and precision (fresh points in the
    union of the cluster's reference balls) and 4 recall (the cluster's reference points in the union of
    the fresh balls) swap roles when the two n-samples are swapped: E[precision] = E[4 recall] = the
    coverage c of k = 3 balls, about 0.98 in 2-D (measured); over 8 seeds the two agree within 0.03
    (their difference has a standard deviation of about 0.013 per seed)."""
    g = torch.Generator().manual_seed(5)
    ref, _ = four_clusters(g)
    assert metrics.precision_recall(ref[:500], ref) == (1.0, 0.25)
    p, r = [], []
    for _ in range(8):
        ref, centres = four_clusters(g)
        pi, ri = metrics.precision_recall((centres[0] + torch.randn(500, 2, generator=g)).double(), ref)
        p.append(pi)
        r.append(ri)
    p, r = torch.tensor(p), torch.tensor(r)
    assert (r <= 0.25).all() and p.mean() > 0.9
    assert abs(p.mean() - 4 * r.mean()) < 0.03


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_input_is_refused_with_the_argument_named():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match='subsets'):
        metrics.kid(x, x, subsets=0)
    with pytest.raises(ValueError, match='subset_size'):
        metrics.kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match='features_2 must be a 2-D'):
        metrics.kid(x, x[0])
    with pytest.raises(ValueError, match='same F'):
        metrics.kid(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match='at least 2 samples in features_1'):
        metrics.kid(x[:1], x)
    with pytest.raises(ValueError, match='features_gen holds non-finite'):
        metrics.precision_recall(torch.full((10, 3), float('nan')), x)
    with pytest.raises(ValueError, match='at least 4 samples in features_ref'):
        metrics.precision_recall(x, x[:3])
    with pytest.raises(ValueError, match='k must be'):
        metrics.precision_recall(x, x, k=0)


# ---- fashion_scores -------------------------------------------------------------------------------

def test_fashion_scores_add_kid_precision_and_recall():
    """A tiny untrained classifier on random images (no data set, no network). Samples = the reference:
    precision = recall = 1 and kid_mean = its identical-set closed form (<= 0; all 40 in one subset).
    Samples = 30 copies of one reference image (a collapse): their balls have radius 0, so recall is at
    most 1/40, every copy lies on a reference point (precision 1), and KID rises. Fewer than k + 1
    samples: precision and recall are None, the rest is still computed."""
    torch.manual_seed(0)
    net = metrics.Classifier().eval()
    ref = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8)
    old_keys = {'fd', 'n_samples', 'n_reference', 'class_shares', 'min_class_share', 'max_class_share'}
    same = metrics.fashion_scores(net, ref, ref)
    assert set(same) == old_keys | {'kid_mean', 'kid_std', 'precision', 'recall', 'mean_pixel', 'reference_mean_pixel'}
    assert same['mean_pixel'] == same['reference_mean_pixel'] == pytest.approx(ref.double().mean().item())
    f = metrics.run_classifier(net, ref)[0]
    kff = cubic_kernel(f, f)
    closed = 2 * ((kff.sum() - kff.diagonal().sum()) / (40 * 39) - kff.diagonal().mean()).item() / 40
    assert same['precision'] == same['recall'] == 1.0
    assert same['kid_mean'] == pytest.approx(closed, rel=1e-6, abs=1e-12) and same['kid_std'] < 1e-9
    collapsed = metrics.fashion_scores(net, ref[:1].expand(30, 1, 32, 32), ref, floor_train=ref.flip(0))
    assert collapsed['recall'] <= 1 / 40 and collapsed['precision'] == 1.0
    assert collapsed['kid_mean'] > same['kid_mean'] + 10 * collapsed['kid_std'] and 'fd_floor' in collapsed
    few = metrics.fashion_scores(net, ref[:3], ref)
    assert few['precision'] is None and few['recall'] is None and math.isfinite(few['kid_mean'])


def test_mean_pixel_of_uint8_and_float_images_on_one_scale():
    x = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(1, 1, 2, 2)
    assert metrics.mean_pixel(x) == pytest.approx(102.0)
    assert metrics.mean_pixel(x.float() / 127.5 - 1) == pytest.approx(102.0)


def test_saved_samples_are_scored_again_as_they_were_drawn(tmp_path, capsys, monkeypatch):
    """metrics.py --samples: an npz in sample.py's layout scores as the tensor it came from, against the
    statistics stored in the shipped classifier (no data set here); bad files are refused up front."""
    import json
    import sys
    import numpy as np
    from pathlib import Path
    classifier = Path(metrics.__file__).parent / 'checkpoints' / 'fashion_classifier.pt'
    torch.manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 32, 32), dtype=torch.uint8)
    np.savez(tmp_path / 'samples.npz', arr_0=images.permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / 'rgb.npz', arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    assert torch.equal(metrics.load_samples(str(tmp_path / 'samples.npz')), images)
    for bad, message in (('rgb.npz', 'expected at least 2 uint8'), ('missing.npz', 'no such file')):
        with pytest.raises(SystemExit, match=message):
            metrics.load_samples(str(tmp_path / bad))
    monkeypatch.setattr(sys, 'argv', ['metrics.py', '--classifier', str(classifier), '--data-dir', str(tmp_path),
                                      '--samples', str(tmp_path / 'samples.npz')])
    metrics.main()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    net, _ = metrics.load_classifier(classifier)
    direct = metrics.scores_against(net, images, metrics.stored_reference(classifier))
    assert printed['fd'] == pytest.approx(direct['fd']) and printed['n_samples'] == 50
    assert printed['class_shares'] == pytest.approx(direct['class_shares'])
