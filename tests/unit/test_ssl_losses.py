"""Tests for dlbench.pretrain.losses.

Part 1: tiny cases worked out by hand (the arithmetic is in the comments) for every function,
plus checks that stop-gradients sit where the papers put them.
Part 2: equality with the `lightly` implementations on random inputs. lightly is a test
dependency (``pip install -e '.[test]'``): without it this module fails to import, loudly, instead
of skipping the comparisons. Where lightly's API differs (argument order, hyper-parameter names/defaults,
where the center lives) the test maps the parameters; the assertions stay tight.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

try:
    import lightly.loss
except ImportError as e:  # never a silent skip: the reference comparisons are the point of Part 2
    raise ImportError("tests/unit/test_ssl_losses.py compares the losses with lightly, a test dependency "
                      "(pyproject [project.optional-dependencies] test); install it: pip install -e '.[test]'") from e

from dlbench.pretrain.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_center_update,
    dino_loss,
    info_nce_queue,
    neg_cosine,
    nt_xent,
    sinkhorn,
    swav_loss,
    vicreg_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _close(actual: torch.Tensor, expected: float, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# Part 1: hand-computed cases
# --------------------------------------------------------------------------------------------


def test_nt_xent_hand_identical_views():
    # z = [e1, e2 | e1, e2] (2N = 4 anchors). Anchor e1 (index 0) sees index 1 (e2, cos 0),
    # index 2 (e1, positive, cos 1), index 3 (e2, cos 0). With T = 0.5 the logits are 0, 2, 0:
    # loss = -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2); all 4 anchors are symmetric.
    z = _t([[1.0, 0.0], [0.0, 1.0]])
    _close(nt_xent(z, z.clone(), temperature=0.5), math.log(1 + 2 * math.exp(-2)))
    # Embeddings are normalised inside: scaling a view changes nothing.
    _close(nt_xent(3.0 * z, 0.5 * z, temperature=0.5), math.log(1 + 2 * math.exp(-2)))


def test_nt_xent_hand_swapped_views():
    # z1 = [e1, e2], z2 = [e2, e1]. Anchor z1[0]=e1: index 1 (e2) logit 0, positive z2[0]=e2
    # logit 0, index 3 (e1) logit 1/0.5 = 2 -> loss = -log(1 / (1 + 1 + e^2)) = log(2 + e^2).
    z1 = _t([[1.0, 0.0], [0.0, 1.0]])
    z2 = _t([[0.0, 1.0], [1.0, 0.0]])
    _close(nt_xent(z1, z2, temperature=0.5), math.log(2 + math.exp(2)))


def test_nt_xent_single_pair_is_zero():
    # N = 1: each anchor's only non-self candidate is its positive, so the loss is 0 for any
    # input (log-softmax over a single logit).
    z1, z2 = _t([[1.0, 2.0]]), _t([[-3.0, 0.5]])
    _close(nt_xent(z1, z2, temperature=0.1), 0.0)


def test_info_nce_queue_hand_and_stop_grad():
    # q = e1, k = (2, 0) -> e1 after normalisation; queue = [e2, -e1]; T = 0.5.
    # logits = [q.k, q.e2, q.(-e1)] / 0.5 = [2, 0, -2]
    # loss = -log(e^2 / (e^2 + 1 + e^-2)) = log(1 + e^-2 + e^-4).
    q = _t([[1.0, 0.0]]).requires_grad_()
    k = _t([[2.0, 0.0]]).requires_grad_()
    queue = _t([[0.0, 1.0], [-1.0, 0.0]]).requires_grad_()
    loss = info_nce_queue(q, k, queue, temperature=0.5)
    _close(loss, math.log(1 + math.exp(-2) + math.exp(-4)))
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None  # momentum-encoder key: stop-gradient
    assert queue.grad is None  # queued keys are constants


def test_info_nce_queue_hand_two_queries():
    # q = [e1, e2], k = [e2, e2], queue = [e1]; T = 1.
    # row 0: logits [q0.k0 = 0, q0.e1 = 1] -> -log(1/(1+e)) = log(1+e)
    # row 1: logits [q1.k1 = 1, q1.e1 = 0] -> -log(e/(e+1)) = log(1+e^-1)
    # mean = (log(1+e) + log(1+e^-1)) / 2
    q = _t([[1.0, 0.0], [0.0, 1.0]])
    k = _t([[0.0, 1.0], [0.0, 3.0]])
    queue = _t([[1.0, 0.0]])
    expected = (math.log(1 + math.e) + math.log(1 + math.exp(-1))) / 2
    _close(info_nce_queue(q, k, queue, temperature=1.0), expected)


def test_neg_cosine_hand_and_stop_grad():
    # cos((1,0),(1,0)) = 1, cos((1,1),(0,1)) = 1/sqrt(2) -> D = -(1 + 1/sqrt2)/2
    p = _t([[1.0, 0.0], [1.0, 1.0]]).requires_grad_()
    z = _t([[1.0, 0.0], [0.0, 1.0]]).requires_grad_()
    loss = neg_cosine(p, z)
    _close(loss, -(1 + 1 / math.sqrt(2)) / 2)
    loss.backward()
    assert z.grad is None  # SimSiam stop-gradient on the target branch
    # d/dp of -cos(p, z)/2 at p=(1,1), z=(0,1): -(z/|p||z| - cos * p/|p|^2)/2
    #   = -((0, 1)/sqrt2 - (1/sqrt2)(1,1)/2)/2 = -(-1/(2 sqrt2), 1/(2 sqrt2))/2
    expected_row1 = _t([1.0, -1.0]) / (4 * math.sqrt(2))
    assert_close(p.grad[1], expected_row1, rtol=1e-5, atol=1e-6)
    assert_close(p.grad[0], _t([0.0, 0.0]), rtol=0, atol=1e-7)  # already aligned


def test_byol_hand_and_stop_grad():
    # per-sample 2 - 2cos: row 0 -> 0, row 1 -> 2 - sqrt2 ; mean = 1 - 1/sqrt2
    p = _t([[1.0, 0.0], [1.0, 1.0]]).requires_grad_()
    z = _t([[5.0, 0.0], [0.0, 2.0]]).requires_grad_()
    loss = byol_loss(p, z)
    _close(loss, 1 - 1 / math.sqrt(2))
    loss.backward()
    assert z.grad is None  # target network branch
    assert p.grad is not None
    # identity with SimSiam's D: 2 - 2cos = 2 + 2 * (-cos)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert_close(byol_loss(a, b), 2 + 2 * neg_cosine(a, b), rtol=1e-5, atol=1e-6)


def test_barlow_twins_hand():
    # N = 2, D = 2. Standardisation (biased var, BatchNorm eps 1e-5) maps any two distinct
    # values to -/+ s with s = 1/sqrt(1 + 1e-5):
    #   z1 = [[1,2],[3,0]]: dim0 (1,3) -> (-s, s); dim1 (2,0) -> (s, -s)
    #   z2 = [[0,1],[2,5]]: dim0 (0,2) -> (-s, s); dim1 (1,5) -> (-s, s)
    # c = z1n^T z2n / 2 = s^2 [[(1+1)/2, (1+1)/2], [(-1-1)/2, (-1-1)/2]] = s^2 [[1, 1], [-1, -1]]
    # loss = (1 - s^2)^2 + (-s^2 - 1)^2 + lambda * (s^4 + s^4)
    z1 = _t([[1.0, 2.0], [3.0, 0.0]])
    z2 = _t([[0.0, 1.0], [2.0, 5.0]])
    s2 = 1 / (1 + 1e-5)
    lam = 5e-3
    expected = (1 - s2) ** 2 + (1 + s2) ** 2 + lam * 2 * s2**2
    _close(barlow_twins_loss(z1, z2, lambda_offdiag=lam), expected)
    # identical views: z1n = s[[-1,1],[1,-1]] -> c = s^2 [[1,-1],[-1,1]]: diagonal ~1 (invariance ~0)
    # but the two dims are anti-correlated -> redundancy term lambda * 2 s^4
    _close(barlow_twins_loss(z1, z1.clone(), lambda_offdiag=lam), 2 * (1 - s2) ** 2 + lam * 2 * s2**2)


def test_vicreg_hand_terms():
    # z1 = [[0,0],[2,2]], z2 = [[1,0],[1,0]]
    # invariance = mean((z1-z2)^2) = (1 + 0 + 1 + 4) / 4 = 1.5
    # variance: var(z1, unbiased) = 2 per dim -> sqrt(2 + 1e-4) > 1 -> hinge 0;
    #           var(z2) = 0 -> sqrt(1e-4) = 0.01 -> hinge 0.99 per dim
    #           -> 0/2 + 0.99/2 = 0.495
    # covariance: centred z1 = [[-1,-1],[1,1]] -> cov = x^T x / (N-1) = [[2,2],[2,2]];
    #             off-diagonal squares 4 + 4 = 8, / D = 4; z2 contributes 0 -> 4
    # total = 25 * 1.5 + 25 * 0.495 + 1 * 4 = 53.875
    z1 = _t([[0.0, 0.0], [2.0, 2.0]])
    z2 = _t([[1.0, 0.0], [1.0, 0.0]])
    loss, terms = vicreg_loss(z1, z2)
    assert set(terms) == {"invariance", "variance", "covariance"}
    _close(terms["invariance"], 1.5)
    _close(terms["variance"], 0.495)
    _close(terms["covariance"], 4.0)
    _close(loss, 53.875)
    loss2, _ = vicreg_loss(z1, z2, sim_coeff=1.0, std_coeff=2.0, cov_coeff=3.0)
    _close(loss2, 1.5 + 2 * 0.495 + 3 * 4.0)


def test_sinkhorn_uniform_and_balancing_hand():
    # Uniform scores -> uniform codes 1/K.
    q = sinkhorn(torch.zeros(6, 3))
    assert_close(q, torch.full((6, 3), 1 / 3), rtol=1e-6, atol=1e-7)
    # Both samples prefer prototype 0: exp(S/eps) = [[a,1],[a,1]]. Equal partition forces each
    # prototype to get N/K = 1 unit of mass, so with identical rows Q = 1/2 everywhere.
    eps = 0.05
    s = _t([[0.5, 0.0], [0.5, 0.0]])
    assert_close(sinkhorn(s, epsilon=eps, iterations=1), torch.full((2, 2), 0.5), rtol=1e-6, atol=1e-7)


def test_sinkhorn_one_iteration_hand():
    # exp(S/eps) = [[3,1],[1,1]] (N x K). One iteration on Q = E^T (K x N):
    #   prototype rows / row sums:  p0 (3,1)/4 = (3/4,1/4); p1 (1,1)/2 = (1/2,1/2)   (then /K)
    #   sample columns / col sums:  s0 (3/8, 1/4)/(5/8) = (3/5, 2/5); s1 (1/8, 1/4)/(3/8) = (1/3, 2/3)
    # -> Q (N x K) = [[3/5, 2/5], [1/3, 2/3]]; prototype masses 14/15, 16/15 (softmax: 5/4, 3/4)
    eps = 0.05
    s = eps * torch.log(_t([[3.0, 1.0], [1.0, 1.0]]))
    q = sinkhorn(s, epsilon=eps, iterations=1)
    assert_close(q, _t([[3 / 5, 2 / 5], [1 / 3, 2 / 3]]), rtol=1e-5, atol=1e-6)


def test_sinkhorn_marginals_random_and_no_grad():
    g = torch.Generator().manual_seed(1)
    n, k = 12, 4
    s = F.normalize(torch.randn(n, 8, generator=g), dim=1) @ F.normalize(torch.randn(k, 8, generator=g), dim=1).T
    s.requires_grad_()
    q = sinkhorn(s, epsilon=0.5, iterations=200)
    assert not q.requires_grad
    assert (q >= 0).all()
    assert_close(q.sum(dim=1), torch.ones(n), rtol=1e-5, atol=1e-6)  # rows: exact by construction
    assert_close(q.sum(dim=0), torch.full((k,), n / k), rtol=1e-4, atol=1e-4)  # equal partition
    # 3 iterations (the default) already move prototype masses towards N/K compared to softmax
    q3 = sinkhorn(s, epsilon=0.5, iterations=3)
    p = torch.softmax(s.detach() / 0.5, dim=1)
    assert (q3.sum(0) - n / k).abs().max() < (p.sum(0) - n / k).abs().max()
    # large scores do not overflow (max-subtraction) and agree with the small-score result
    q_big = sinkhorn(s.detach() + 100.0, epsilon=0.05)
    assert torch.isfinite(q_big).all()
    assert_close(q_big, sinkhorn(s.detach(), epsilon=0.05), rtol=1e-4, atol=1e-6)


def test_swav_loss_hand():
    # T = eps = 0.05. View 0: exp(S0/eps) = [[3,1],[1,1]] -> codes Q0 = [[3/5,2/5],[1/3,2/3]]
    # (see test above, 1 iteration); log-softmax(S0/T) rows: [ln 3/4, ln 1/4], [ln 1/2, ln 1/2].
    # View 1: zeros -> codes Q1 = 1/2 everywhere, log-softmax = ln 1/2.
    # code 0 predicted by view 1: -mean_rows sum Q0 ln(1/2) = ln 2 (rows of Q0 sum to 1)
    # code 1 predicted by view 0: row0 -(ln(3/4) + ln(1/4))/2 = ln(16/3)/2, row1 ln 2
    #                             -> A = (ln(16/3)/2 + ln 2) / 2
    # 2 views: each code term / (2 - 1), averaged over the 2 code views.
    eps = 0.05
    s0 = eps * torch.log(_t([[3.0, 1.0], [1.0, 1.0]]))
    s1 = torch.zeros(2, 2)
    a = (math.log(16 / 3) / 2 + LN2) / 2
    _close(swav_loss([s0, s1], n_global=2, temperature=eps, epsilon=eps, iterations=1), (LN2 + a) / 2)
    # Add a local view (zeros) that only predicts: code 0 from views {1, 2}: (ln2 + ln2)/2;
    # code 1 from views {0, 2}: (A + ln2)/2; average over the 2 code views.
    s2 = torch.zeros(2, 2)
    expected = (LN2 + (a + LN2) / 2) / 2
    _close(swav_loss([s0, s1, s2], n_global=2, temperature=eps, epsilon=eps, iterations=1), expected)


def test_swav_codes_get_no_gradient():
    # With two views, view 0's scores enter the loss as (a) codes for view 1 and (b) predictions
    # of view 1's codes. Only (b) may carry gradient: compare with the loss built from detached codes.
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(5, 3, generator=g).requires_grad_()
    s1 = torch.randn(5, 3, generator=g).requires_grad_()
    swav_loss([s0, s1], n_global=2).backward()
    q0, q1 = sinkhorn(s0), sinkhorn(s1)
    s0b, s1b = s0.detach().clone().requires_grad_(), s1.detach().clone().requires_grad_()
    ref = -0.5 * ((q0 * F.log_softmax(s1b / 0.1, 1)).sum(1).mean() + (q1 * F.log_softmax(s0b / 0.1, 1)).sum(1).mean())
    ref.backward()
    assert_close(s0.grad, s0b.grad, rtol=1e-5, atol=1e-6)
    assert_close(s1.grad, s1b.grad, rtol=1e-5, atol=1e-6)


def test_dino_loss_hand_and_stop_grad():
    # K = 2, N = 1, center 0, teacher_temp 0.04, student_temp 0.1.
    # teacher: t0 = 0 -> (1/2, 1/2); t1 = (0.04 ln3, 0) -> softmax(ln3, 0) = (3/4, 1/4)
    # student: s0 = 0 -> ln(1/2) each; s1 = (0.1 ln3, 0) -> (ln 3/4, ln 1/4)
    # pairs (t0,s1): -(ln(3/4) + ln(1/4))/2 = ln(16/3)/2 ; (t1,s0): ln 2  -> mean of 2 pairs
    t0 = torch.zeros(1, 2).requires_grad_()
    t1 = _t([[0.04 * LN3, 0.0]]).requires_grad_()
    s0 = torch.zeros(1, 2).requires_grad_()
    s1 = _t([[0.1 * LN3, 0.0]]).requires_grad_()
    center = torch.zeros(1, 2)
    loss = dino_loss([s0, s1], [t0, t1], center)
    _close(loss, (math.log(16 / 3) / 2 + LN2) / 2)
    loss.backward()
    assert t0.grad is None and t1.grad is None  # teacher: no gradient
    assert s0.grad is not None and s1.grad is not None
    # a local student view s2 = 0 adds pairs (t0,s2) = ln 2 and (t1,s2) = ln 2 -> 4 pairs
    s2 = torch.zeros(1, 2)
    _close(dino_loss([s0, s1, s2], [t0, t1], center), (math.log(16 / 3) / 2 + 3 * LN2) / 4)


def test_dino_loss_hand_with_center():
    # center c = (0.04 ln3, 0): t1 - c = 0 -> (1/2, 1/2); t0 - c = (-0.04 ln3, 0) -> (1/4, 3/4)
    # (t0,s1): -(1/4 ln(3/4) + 3/4 ln(1/4)) ; (t1,s0): ln 2
    t0, t1 = torch.zeros(1, 2), _t([[0.04 * LN3, 0.0]])
    s0, s1 = torch.zeros(1, 2), _t([[0.1 * LN3, 0.0]])
    center = _t([[0.04 * LN3, 0.0]])
    expected = (-(0.25 * math.log(0.75) + 0.75 * math.log(0.25)) + LN2) / 2
    _close(dino_loss([s0, s1], [t0, t1], center), expected)
    _close(dino_loss([s0, s1], [t0, t1], center.view(2)), expected)  # 1-D center broadcasts too


def test_dino_center_update_hand():
    # batch mean of [[1,1],[3,3]] = (2,2); 0.9 * (0,1) + 0.1 * (2,2) = (0.2, 1.1)
    center = _t([[0.0, 1.0]])
    out = _t([[1.0, 1.0], [3.0, 3.0]]).requires_grad_()
    new = dino_center_update(center, out, momentum=0.9)
    assert new.shape == (1, 2) and not new.requires_grad
    assert_close(new, _t([[0.2, 1.1]]), rtol=1e-6, atol=1e-7)
    assert_close(center, _t([[0.0, 1.0]]))  # input center untouched (pure function)
    assert_close(dino_center_update(center.view(2), out, momentum=0.5), _t([1.0, 1.5]))


def test_losses_compute_in_float32():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    ah, bh = a.bfloat16(), b.bfloat16()
    for fn in (nt_xent, neg_cosine, byol_loss, barlow_twins_loss):
        out = fn(ah, bh)
        assert out.dtype == torch.float32
        assert_close(out, fn(ah.float(), bh.float()))
    loss, terms = vicreg_loss(ah, bh)
    assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    assert swav_loss([ah, bh]).dtype == torch.float32
    assert dino_loss([ah, bh], [ah, bh], torch.zeros(1, 16)).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Part 2: equality with lightly
# --------------------------------------------------------------------------------------------

SHAPES = [(4, 8), (16, 32), (64, 128)]
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def lightly_loss():
    return lightly.loss


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly(lightly_loss, shape, temperature):
    g = torch.Generator().manual_seed(shape[0] + int(temperature * 10))
    z1, z2 = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    ref = lightly_loss.NTXentLoss(temperature=temperature)(z1, z2)
    assert_close(nt_xent(z1, z2, temperature=temperature), ref, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_info_nce_queue_matches_lightly_memory_bank(lightly_loss, shape):
    # lightly's NTXentLoss with a memory bank is MoCo's InfoNCE: logits [q.k, q.bank^T] / T,
    # target 0. Its bank (K x D, normalised) plays the role of our queue.
    n, d = shape
    k_size = 3 * n
    g = torch.Generator().manual_seed(10 + n)
    q, k = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    queue = F.normalize(torch.randn(k_size, d, generator=g), dim=1)
    fn = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(k_size, d))
    fn.memory_bank.bank = queue.clone()
    ref = fn(q, k)  # q does not require grad -> bank is not updated, negatives = queue
    assert_close(info_nce_queue(q, k, queue, temperature=0.2), ref, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_neg_cosine_matches_lightly(lightly_loss, shape):
    g = torch.Generator().manual_seed(20 + shape[0])
    p, z = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    assert_close(neg_cosine(p, z), lightly_loss.NegativeCosineSimilarity()(p, z), **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lam", [5e-3, 0.1])
def test_barlow_twins_matches_lightly(lightly_loss, shape, lam):
    g = torch.Generator().manual_seed(30 + shape[0])
    z1, z2 = torch.randn(*shape, generator=g) * 2 + 1, torch.randn(*shape, generator=g)
    ref = lightly_loss.BarlowTwinsLoss(lambda_param=lam)(z1, z2)
    assert_close(barlow_twins_loss(z1, z2, lambda_offdiag=lam), ref, **TOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 2.0, 3.0)])
def test_vicreg_matches_lightly(lightly_loss, shape, coeffs):
    from lightly.loss import vicreg_loss as lv

    sim, std, cov = coeffs
    g = torch.Generator().manual_seed(40 + shape[0])
    # scale 0.5 so some dimensions fall below std 1 and the variance hinge is active
    z1, z2 = 0.5 * torch.randn(*shape, generator=g), 1.5 * torch.randn(*shape, generator=g)
    loss, terms = vicreg_loss(z1, z2, sim_coeff=sim, std_coeff=std, cov_coeff=cov)
    ref = lightly_loss.VICRegLoss(lambda_param=sim, mu_param=std, nu_param=cov, eps=1e-4)(z1, z2)
    assert_close(loss, ref, **TOL)
    assert terms["variance"] > 0
    assert_close(terms["invariance"], lv.invariance_loss(z1, z2), **TOL)
    assert_close(terms["variance"], 0.5 * (lv.variance_loss(z1, 1e-4) + lv.variance_loss(z2, 1e-4)), **TOL)
    assert_close(terms["covariance"], lv.covariance_loss(z1) + lv.covariance_loss(z2), **TOL)


def _prototype_scores(g: torch.Generator, n: int, d: int, k: int, views: int) -> list[torch.Tensor]:
    """Cosine similarities to prototypes, as SwAV computes them (in [-1, 1])."""
    protos = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return [F.normalize(torch.randn(n, d, generator=g), dim=1) @ protos.T for _ in range(views)]


@pytest.mark.parametrize("n,k", [(8, 4), (32, 16), (64, 30)])
@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_lightly(lightly_loss, n, k, iterations):
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    g = torch.Generator().manual_seed(50 + n)
    (s,) = _prototype_scores(g, n, 16, k, 1)
    ref = lightly_sinkhorn(s, iterations=iterations, epsilon=0.05)
    assert_close(sinkhorn(s, epsilon=0.05, iterations=iterations), ref, **TOL)


@pytest.mark.parametrize("n,k,n_global,n_local", [(8, 4, 2, 0), (16, 10, 2, 4), (32, 20, 2, 6), (16, 8, 1, 2)])
def test_swav_matches_lightly(lightly_loss, n, k, n_global, n_local):
    # lightly takes (high_resolution_outputs, low_resolution_outputs); our list is global views
    # first. Same averaging: per code view sum over other views / (n_views - 1), mean over codes.
    g = torch.Generator().manual_seed(60 + n + n_local)
    scores = [s.requires_grad_() for s in _prototype_scores(g, n, 16, k, n_global + n_local)]
    fn = lightly_loss.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    ref = fn(scores[:n_global], scores[n_global:])
    ref_grads = torch.autograd.grad(ref.sum(), scores, allow_unused=True, materialize_grads=True)
    ours = swav_loss(scores, n_global=n_global, temperature=0.1, epsilon=0.05, iterations=3)
    grads = torch.autograd.grad(ours, scores, allow_unused=True, materialize_grads=True)
    assert_close(ours, ref.reshape(()), **TOL)  # lightly returns shape (1,)
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n,k,n_local", [(4, 16, 0), (16, 64, 2), (32, 256, 6)])
def test_dino_matches_lightly(lightly_loss, n, k, n_local):
    # lightly's DINOLoss(teacher_out, student_out) keeps the center as a buffer of shape
    # (1, 1, K) and updates it inside forward; we set it to our center before the call, compare
    # the loss, then compare lightly's updated buffer with dino_center_update on the teacher
    # outputs of all global views (lightly: mean over (views, batch) = our mean of the concat).
    g = torch.Generator().manual_seed(70 + n)
    teacher = [torch.randn(n, k, generator=g) for _ in range(2)]
    student = [torch.randn(n, k, generator=g).requires_grad_() for _ in range(2 + n_local)]
    center = 0.3 * torch.randn(1, k, generator=g)
    fn = lightly_loss.DINOLoss(
        output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9
    )
    fn.center.copy_(center.view(1, 1, k))
    ref = fn(teacher, student)
    ref_grads = torch.autograd.grad(ref, student)
    ours = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    grads = torch.autograd.grad(ours, student)
    assert_close(ours, ref, **TOL)
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, rtol=1e-5, atol=1e-7)
    new_center = dino_center_update(center, torch.cat(teacher), momentum=0.9)
    assert_close(new_center, fn.center.view(1, k), **TOL)
