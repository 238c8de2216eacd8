import ot as pot
import pytest
import torch

from otdistill.errors import UserError
from otdistill.ot import entropic_ot, exact_ot, pairwise_cost, sinkhorn


def clouds(n=6, m=9, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("metric", ["l1", "sqeuclidean", "cosine"])
def test_costs_match_pot(metric):
    x, y = clouds()
    ref = pot.dist(x.numpy(), y.numpy(), metric={"l1": "cityblock", "sqeuclidean": "sqeuclidean", "cosine": "cosine"}[metric])
    assert torch.allclose(pairwise_cost(x, y, metric), torch.from_numpy(ref), atol=1e-9)


@pytest.mark.parametrize("metric", ["l1", "sqeuclidean"])
def test_small_eps_value_and_gradient_match_exact_ot(metric):
    x, y = clouds()
    x.requires_grad_(True)
    value, _ = entropic_ot(x, y, reg=1e-3, metric=metric, max_iter=20000)
    assert value.item() == pytest.approx(exact_ot(x, y, metric), rel=2e-3)
    grad, = torch.autograd.grad(value, x)
    # exact OT gradient: the optimal plan of emd2 (envelope theorem) times the cost derivative
    C = pairwise_cost(x, y, metric)
    plan = torch.from_numpy(pot.emd(pot.unif(len(x)), pot.unif(len(y)), C.detach().numpy()))
    exact_grad, = torch.autograd.grad((plan * C).sum(), x)
    assert torch.allclose(grad, exact_grad, atol=5e-3)


def test_gradient_matches_finite_differences():
    x, y = clouds()
    reg = 0.1

    def val(x_):
        C = pairwise_cost(x_, y, "sqeuclidean")
        res = sinkhorn(C, reg, tol=1e-13, max_iter=50000)
        # the full entropic objective, whose gradient the envelope theorem gives exactly
        P = res.plan
        return ((P * C).sum() + reg * (P * (P / (1 / (len(x) * len(y)))).log()).sum()).item()

    x.requires_grad_(True)
    C = pairwise_cost(x, y, "sqeuclidean")
    plan = sinkhorn(C, reg, tol=1e-13, max_iter=50000).plan
    grad, = torch.autograd.grad((plan * C).sum(), x)
    h = 1e-6
    for i, j in [(0, 0), (2, 3), (5, 1)]:
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[i, j] += h
        xm[i, j] -= h
        assert (val(xp) - val(xm)) / (2 * h) == pytest.approx(grad[i, j].item(), rel=1e-4, abs=1e-6)


def test_warm_start_gives_the_cold_plan_in_fewer_iterations():
    x, y = clouds(20, 30, 8)
    C = pairwise_cost(x, y, "l1")
    C = C / C.mean()
    cold = sinkhorn(C, 0.01)
    warm = sinkhorn(C, 0.01, warmstart=cold.potentials)
    assert torch.allclose(cold.plan, warm.plan, atol=1e-10)
    assert warm.iterations < cold.iterations
    # a slightly moved cloud (the next sampling step) also converges to its own cold plan
    C2 = pairwise_cost(x + 0.01, y, "l1")
    C2 = C2 / C2.mean()
    assert torch.allclose(sinkhorn(C2, 0.01, warmstart=cold.potentials).plan, sinkhorn(C2, 0.01).plan, atol=1e-8)


def test_unknown_cost_is_a_user_error():
    x, y = clouds()
    with pytest.raises(UserError, match="unknown ground cost"):
        pairwise_cost(x, y, "l7")
