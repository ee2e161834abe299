"""The solvers agree with each other, with a textbook CG, and with scikit-learn's LabelSpreading."""

import pytest
import torch
from conftest import DEVICES

from lposs.core.propagation import conjugate_gradient, normalize_adjacency, propagate


def random_graph(n: int, seed: int = 0, dtype=torch.float64, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(n, n, generator=g, dtype=dtype)
    W = (W + W.T) * (torch.rand(n, n, generator=g, dtype=dtype) > 0.7)
    W = W * (W == W.T)  # keep the graph symmetric after masking
    W = torch.triu(W, 1) + torch.triu(W, 1).T
    return normalize_adjacency(W).to(device)


def textbook_cg(A: torch.Tensor, b: torch.Tensor, maxiter: int, tol: float) -> torch.Tensor:
    """Plain CG for one vector, written the way the numerical-analysis books write it."""
    x = torch.zeros_like(b)
    if b.norm() == 0:
        return x  # as scipy/cupy: a zero right-hand side is solved by zero
    r = b.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(maxiter):
        Ap = A @ p
        a = rs / (p @ Ap)
        x = x + a * p
        r = r - a * Ap
        rs_new = r @ r
        if rs_new.sqrt() <= tol * b.norm():
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_converged_solvers_equal_closed_form(device, dtype):
    S = random_graph(60, dtype=dtype, device=device)
    Y = torch.randn(60, 5, dtype=dtype, device=device)
    exact = propagate(S, Y, alpha=0.9, method="closed_form")
    cg = propagate(S, Y, alpha=0.9, method="cg", maxiter=500, tol=1e-12)
    fp = propagate(S, Y, alpha=0.9, method="fixed_point", maxiter=5000, tol=1e-12)
    atol = 1e-5 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(cg, exact, atol=atol, rtol=1e-5)
    torch.testing.assert_close(fp, exact, atol=atol, rtol=1e-5)
    residual = Y - (exact - 0.9 * S @ exact)
    assert residual.abs().max() < 1e-4


@pytest.mark.parametrize("layout", ["dense", "sparse", "operator"])
def test_reference_cg_equals_textbook_cg_per_column(layout):
    S = random_graph(80, seed=1)
    Y = torch.randn(80, 7, dtype=torch.float64)
    Y[:, 3] = 0  # a zero column is solved by zero, without dividing by zero
    A = torch.eye(80, dtype=torch.float64) - 0.95 * S
    expected = torch.stack([textbook_cg(A, Y[:, c], maxiter=10, tol=1e-6) for c in range(7)], dim=1)

    class Operator:
        def matmul(self, X):
            return S @ X

    graph = {"dense": S, "sparse": S.to_sparse(), "operator": Operator()}[layout]
    batched = propagate(graph, Y, alpha=0.95, method="cg", maxiter=10, tol=1e-6)
    looped = propagate(graph, Y, alpha=0.95, method="cg_reference", maxiter=10, tol=1e-6)
    torch.testing.assert_close(batched, expected, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(looped, expected, atol=1e-10, rtol=1e-9)
    assert torch.all(batched[:, 3] == 0)


def test_columns_stop_independently_like_a_column_loop():
    # column 0 is an eigenvector-like easy case that converges in one step; column 1 keeps iterating.
    S = random_graph(50, seed=2)
    Y = torch.randn(50, 2, dtype=torch.float64)
    Y[:, 0] = 0
    Y[0, 0] = 1.0
    A = lambda X: X - 0.5 * S @ X  # noqa: E731
    tol = 1e-3
    batched = conjugate_gradient(A, Y, maxiter=30, tol=tol)
    single = torch.cat([conjugate_gradient(A, Y[:, c : c + 1], maxiter=30, tol=tol) for c in range(2)], dim=1)
    torch.testing.assert_close(batched, single, atol=1e-12, rtol=1e-12)


def test_one_dimensional_seeds_and_bad_arguments():
    S = random_graph(20)
    y = torch.randn(20, dtype=torch.float64)
    f = propagate(S, y, method="closed_form")
    assert f.shape == (20,)
    with pytest.raises(ValueError, match="unknown propagation method"):
        propagate(S, y, method="magic")
    with pytest.raises(ValueError, match="alpha"):
        propagate(S, y, alpha=1.0)


def test_normalisation_dense_and_sparse_agree_and_handle_isolated_nodes():
    W = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    S = normalize_adjacency(W)
    assert torch.equal(S[2], torch.zeros(3))  # isolated node: degree 1, no NaN
    torch.testing.assert_close(S, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(normalize_adjacency(W.to_sparse()).to_dense(), S)


def test_equals_scikit_learn_label_spreading_on_two_moons():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import make_moons
    from sklearn.neighbors import kneighbors_graph
    from sklearn.semi_supervised import LabelSpreading

    X, truth = make_moons(n_samples=200, noise=0.08, random_state=0)
    labels = -torch.ones(200, dtype=torch.long)
    labelled = torch.tensor([int((truth == c).nonzero()[0][i]) for c in (0, 1) for i in range(3)])
    labels[labelled] = torch.as_tensor(truth)[labelled]
    knn = kneighbors_graph(X, 10, include_self=False).toarray()
    W = ((knn + knn.T) > 0).astype(float)  # symmetric kNN graph

    alpha = 0.9
    model = LabelSpreading(kernel=lambda a, b: W, alpha=alpha, max_iter=10_000, tol=1e-12)
    model.fit(X, labels.numpy())

    Y = torch.zeros(200, 2, dtype=torch.float64)
    Y[labelled, labels[labelled]] = 1
    F = propagate(normalize_adjacency(torch.as_tensor(W)), Y, alpha=alpha, method="closed_form")
    ours = F / F.sum(1, keepdim=True)
    torch.testing.assert_close(ours, torch.as_tensor(model.label_distributions_), atol=1e-6, rtol=1e-6)
    assert (ours.argmax(1).numpy() == truth).mean() > 0.85  # 6 labels, 200 points: 0.91 here; chance is 0.5


@pytest.mark.parametrize("check_every", [0, 3])
def test_cg_without_convergence_checks_equals_the_checked_loop(check_every):
    # the columns stop at different iterations and all of them long before maxiter: frozen columns stay put
    S = random_graph(50, seed=3)
    Y = torch.randn(50, 3, dtype=torch.float64)
    Y[:, 0] = 0
    Y[0, 0] = 1.0
    A = lambda X: X - 0.5 * S @ X  # noqa: E731
    checked = conjugate_gradient(A, Y, maxiter=60, tol=1e-4, check_every=1)
    unchecked = conjugate_gradient(A, Y, maxiter=60, tol=1e-4, check_every=check_every)
    assert torch.equal(checked, unchecked)
    single = torch.cat([conjugate_gradient(A, Y[:, c : c + 1], maxiter=60, tol=1e-4) for c in range(3)], dim=1)
    torch.testing.assert_close(unchecked, single, atol=1e-12, rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cg_on_cuda_never_waits_for_the_device():
    S = random_graph(64, seed=4, dtype=torch.float32, device="cuda")
    Y = torch.randn(64, 5, device="cuda")
    propagate(S, Y, maxiter=2)  # warm-up (lazy CUDA initialisation may synchronise)
    torch.cuda.set_sync_debug_mode("error")
    try:
        F = propagate(S, Y, alpha=0.95, method="cg", maxiter=10, tol=1e-6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = propagate(S.cpu(), Y.cpu(), alpha=0.95, method="cg", maxiter=10, tol=1e-6)
    torch.testing.assert_close(F.cpu(), expected, atol=1e-5, rtol=1e-4)
