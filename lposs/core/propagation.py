"""Label propagation: solve (I - alpha S) F = Y for every class column at once.

`S` is a symmetrically normalised affinity matrix, S = D^-1/2 W D^-1/2, given as
- a dense tensor [N, N],
- a torch sparse tensor [N, N] (COO or CSR), or
- any object with a `matmul(X) -> S @ X` method (a matrix-free operator, e.g. the pixel stencil); one that
  also has `residual(X, alpha) -> X - alpha S X` gives the solver its operator in one call.

Solvers (all start from F = 0):
- "cg": conjugate gradient over all columns at once, with per-column scalars; a column that
  reaches `||r|| <= tol * ||y||` stops changing, so the result equals a column-by-column CG.
- "cg_reference": the released code's loop, one CG per column (slow; kept to check "cg" against).
- "closed_form": F = (I - alpha S)^-1 Y with a dense solve (small graphs only).
- "fixed_point": F <- alpha S F + Y until the update is below `tol` (for teaching; slow to converge).

The talk's objective is minimised by (1 - alpha) F; the constant does not change the argmax.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .defaults import ALPHA, MAXITER, TOL

METHODS = ("cg", "cg_reference", "closed_form", "fixed_point")


def apply(S: Any, X: Tensor) -> Tensor:
    """S @ X for a dense tensor, a sparse tensor or a matrix-free operator."""
    if isinstance(S, Tensor):
        return S @ X
    if hasattr(S, "matmul"):
        return S.matmul(X)
    raise TypeError(f"S must be a tensor or have a .matmul(X) method, got {type(S).__name__}")


def normalize_adjacency(W: Tensor) -> Tensor:
    """D^-1/2 W D^-1/2 with d = W.sum(1) and a zero degree replaced by 1 (dense or sparse W)."""
    if W.is_sparse or W.layout == torch.sparse_csr:
        W = W.to_sparse_coo().coalesce()
        d = torch.sparse.sum(W, dim=1).to_dense()
        d = torch.where(d == 0, torch.ones_like(d), d)
        inv_sqrt = d.rsqrt()
        rows, cols = W.indices()
        values = W.values() * inv_sqrt[rows] * inv_sqrt[cols]
        return torch.sparse_coo_tensor(W.indices(), values, W.shape, check_invariants=False).coalesce()
    d = W.sum(1)
    d = torch.where(d == 0, torch.ones_like(d), d)
    inv_sqrt = d.rsqrt()
    return inv_sqrt[:, None] * W * inv_sqrt[None, :]


def propagate(
    S: Any,
    Y: Tensor,
    alpha: float = ALPHA,
    method: str = "cg",
    maxiter: int = 10,
    tol: float = TOL,
) -> Tensor:
    """Solve (I - alpha S) F = Y for F [N, C] given seeds Y [N, C] (a 1-D Y is one column)."""
    if method not in METHODS:
        raise ValueError(f"unknown propagation method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
    column = Y.dim() == 1
    Y2 = Y[:, None] if column else Y  # [N, C]

    def A(X: Tensor) -> Tensor:  # (I - alpha S) X: the operator's own fused form, or one call after S X
        if hasattr(S, "residual"):
            return S.residual(X, alpha)
        return torch.add(X, apply(S, X), alpha=-alpha)

    if method == "cg":
        steps = S.cg_steps(alpha) if hasattr(S, "cg_steps") else None  # an operator's fused CG kernels
        F = conjugate_gradient(A, Y2, maxiter=maxiter, tol=tol, steps=steps)
    elif method == "cg_reference":
        F = torch.stack(
            [conjugate_gradient(A, Y2[:, c : c + 1], maxiter, tol)[:, 0] for c in range(Y2.shape[1])], dim=1
        )
    elif method == "closed_form":
        F = closed_form(S, Y2, alpha)
    else:
        F = fixed_point(S, Y2, alpha, maxiter=maxiter, tol=tol)
    return F[:, 0] if column else F


class TorchSteps:
    """The two data-heavy steps of a CG iteration, in torch calls; an operator may bring fused ones
    (`cg_steps(alpha)`, e.g. `lposs.core.graphs.FusedPixelSteps` on CUDA)."""

    def __init__(self, A: Callable[[Tensor], Tensor]):
        self.A = A

    def operator_and_dot(self, P: Tensor) -> tuple[Tensor, Tensor]:
        """(Q, <P, Q> per column) with Q = A P."""
        Q = self.A(P)  # [N, C]
        return Q, (P * Q).sum(0)

    def update_(self, X: Tensor, R: Tensor, P: Tensor, Q: Tensor, step: Tensor) -> Tensor:
        """X += step P, R -= step Q in place -> the new sum(R^2) per column [C]."""
        X.addcmul_(P, step)
        R.addcmul_(Q, step, value=-1)
        return (R * R).sum(0)


def conjugate_gradient(A: Callable[[Tensor], Tensor], B: Tensor, maxiter: int = MAXITER, tol: float = TOL,
                       check_every: int | None = None, steps: TorchSteps | None = None) -> Tensor:
    """Batched CG for A X = B (A symmetric positive definite), X0 = 0, one set of scalars per column.

    Same iteration and stopping rule as cupyx/scipy `cg(A, b, x0=0, tol, maxiter)` run on each column:
    after each step a column stops once ||r|| <= tol * ||b||; a zero column is solved by X = 0.
    A stopped column is frozen by masked updates (step and beta 0), so the loop may run on after every
    column has stopped without changing the result. Asking whether all have stopped is a host
    synchronisation on a GPU: `check_every` = n asks every n iterations, 0 never (the loop runs
    `maxiter` iterations without waiting for the device); None means 1 on CPU and 0 on CUDA.
    steps: how the operator, the dot product and the X, R update are computed (default: torch calls on A).
    """
    if check_every is None:
        check_every = 0 if B.is_cuda else 1
    steps = steps or TorchSteps(A)
    # Few, fused element-wise calls: on a GPU each is a kernel launch and a pass over [N, C] in memory.
    X = torch.zeros_like(B)  # [N, C]
    R = B.clone()
    P = R.clone()
    rho = (R * R).sum(0)  # [C]
    b_norm = B.norm(dim=0)  # [C]
    atol_sq = (tol * b_norm).square()  # ||r|| <= tol ||b||  <=>  ||r||^2 <= (tol ||b||)^2
    active = b_norm > 0  # [C]
    zero = b_norm.new_zeros(())  # made once: a Python 0.0 in torch.where costs a fill kernel per call
    for iteration in range(maxiter):
        if check_every and iteration % check_every == 0 and not bool(active.any()):
            break
        Q, pq = steps.operator_and_dot(P)  # A P [N, C], <P, A P> [C]
        step = torch.where(active, rho / pq, zero)  # a stopped column takes no step
        rho_new = steps.update_(X, R, P, Q, step)  # X += step P, R -= step Q; sum(R^2) [C]
        active &= rho_new > atol_sq
        beta = torch.where(active, rho_new / rho, zero)  # rho > 0 while a column is active
        P = torch.addcmul(R, P, beta)  # R + beta P
        rho = rho_new
    return X


def closed_form(S: Any, Y: Tensor, alpha: float) -> Tensor:
    """F = (I - alpha S)^-1 Y by a dense linear solve: O(N^3), for small graphs and tests."""
    if isinstance(S, Tensor):
        dense = S.to_dense() if (S.is_sparse or S.layout == torch.sparse_csr) else S
    elif hasattr(S, "to_dense"):
        dense = S.to_dense()
    else:
        raise TypeError("closed_form needs S as a tensor or an operator with .to_dense(); use method='cg'")
    n = dense.shape[0]
    eye = torch.eye(n, dtype=dense.dtype, device=dense.device)
    return torch.linalg.solve(eye - alpha * dense, Y)


def fixed_point(S: Any, Y: Tensor, alpha: float, maxiter: int = 1000, tol: float = 1e-6) -> Tensor:
    """Iterate F <- alpha S F + Y from F = 0 until ||F_new - F|| <= tol * ||F_new|| (Zhou et al. 2004)."""
    F = torch.zeros_like(Y)
    for _ in range(maxiter):
        F_new = alpha * apply(S, F) + Y
        done = (F_new - F).norm() <= tol * F_new.norm()
        F = F_new
        if done:
            break
    return F
