"""L1-penalised logistic regression with soft labels and row weights, two ways.

Objective (upstream's ``LogisticRegressionCV(penalty="l1", solver="liblinear")`` as
``alpaca_eval.metrics.glm_winrate`` calls it on soft labels)::

    ||beta||_1 + C * sum_i w_i * CE(y_i, logistic(X_i beta))

* :func:`fit_l1_logistic`: the exact minimiser (proximal Newton), our own solver;
* :func:`fit_l1_liblinear`: the iterates liblinear itself produces (tolerance 1e-4), replayed
  step by step, so that a cross-validated choice of C lands where upstream's does.

Plus the pieces of scikit-learn's cross-validation that upstream relies on:
:func:`group_kfold_test_folds`, :func:`upstream_cs`, :func:`liblinear_seeds`. scikit-learn
is not a dependency; the tests pin these against numbers it produced.

:func:`fit_l1_liblinear` is a port of LIBLINEAR's ``solve_l1r_lr`` (BSD-3-Clause, Copyright (c)
2007-2014 The LIBLINEAR Project) as bundled with scikit-learn: the copyright notices and licence
texts are in THIRD_PARTY_NOTICES.md at the repository root.
"""

from __future__ import annotations

import numpy as np


def logistic(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _l1_newton_step(beta: np.ndarray, grad: np.ndarray, hess: np.ndarray, alpha: float) -> np.ndarray:
    """argmin_d grad.d + d'Hd/2 + alpha ||beta + d||_1 (the proximal Newton direction).

    Fast path: if no coefficient is zero and the plain Newton step with the L1 gradient
    ``alpha * sign(beta)`` keeps every sign, it is the exact minimiser. Otherwise exact
    coordinate descent with soft-thresholding (3 coordinates, converges in a few sweeps).
    """
    sign = np.sign(beta)
    if np.all(sign != 0):
        try:
            d = np.linalg.solve(hess, -(grad + alpha * sign))
            if np.all(np.sign(beta + d) == sign):
                return d
        except np.linalg.LinAlgError:
            pass
    d = np.zeros_like(beta)
    for _ in range(1000):
        d_old = d.copy()
        for j in range(len(beta)):
            a = hess[j, j]
            if a <= 1e-300:  # a column of zeros (e.g. no length difference): keep the coefficient
                continue
            b = grad[j] + hess[j] @ d - a * d[j]
            u = beta[j] - b / a
            d[j] = np.sign(u) * max(abs(u) - alpha / a, 0.0) - beta[j]
        if np.abs(d - d_old).max() < 1e-15:
            break
    return d


def fit_l1_logistic(X: np.ndarray, y: np.ndarray, weight: np.ndarray, C: float,
                    beta0: np.ndarray | None = None, tol: float = 1e-10) -> np.ndarray:
    """Exact minimiser of ``||beta||_1 + C * sum_i weight_i * CE(y_i, logistic(X_i beta))``.

    This is liblinear's L1-regularised logistic regression (``-s 6``) objective as scikit-learn
    calls it: liblinear minimises ``||w||_1 + sum_i C_i log(1 + exp(-t_i w.x_i))`` with a
    per-row ``C_i = C * sample_weight_i`` (scikit-learn passes sample weights to liblinear as
    per-instance multipliers of C; no normalisation by their sum, unlike its lbfgs path).
    Upstream turns each soft label y into two rows, ``t = +1`` with weight ``y * w`` and
    ``t = -1`` with weight ``(1 - y) * w``, whose losses add up to ``w * CE(y, p)``; so dividing
    by C, the penalty on the soft-label loss is ``alpha * ||beta||_1`` with ``alpha = 1 / C``.

    Solver: proximal Newton (GLMNET-style): exact coordinate descent on the quadratic model
    with soft-thresholding, then a backtracking line search; stops when the step is below
    ``tol``. Solved to convergence, unlike liblinear (tol 1e-4): see :func:`fit_l1_liblinear`.
    """
    alpha = 1.0 / C
    beta = np.zeros(X.shape[1]) if beta0 is None else np.array(beta0, dtype=float)
    z = X @ beta
    wy = weight * y
    f = float(weight @ np.logaddexp(0.0, z) - wy @ z) + alpha * float(np.abs(beta).sum())
    for _ in range(200):
        p = logistic(z)
        grad = X.T @ (weight * p - wy)
        if not beta.any() and np.abs(grad).max() <= alpha:  # zero satisfies the optimality condition
            break
        hess = (X.T * (weight * p * (1 - p))) @ X
        d = _l1_newton_step(beta, grad, hess, alpha)
        xd = X @ d
        decrease = grad @ d + alpha * (np.abs(beta + d).sum() - np.abs(beta).sum())
        t = 1.0
        while True:  # backtracking (Armijo rule of GLMNET / liblinear's newGLMNET)
            z_new = z + t * xd
            f_new = float(weight @ np.logaddexp(0.0, z_new) - wy @ z_new) + alpha * float(np.abs(beta + t * d).sum())
            if f_new <= f + 0.01 * t * decrease or t < 1e-10:
                break
            t *= 0.5
        beta, z, f = beta + t * d, z_new, f_new
        if np.abs(t * d).max() < tol:
            break
    return beta


# ---------------------------------------------------------------- liblinear's L1 solver, mirrored
# Upstream's CV curve over C is flat for large C (scores equal to ~1e-6), so which C wins is
# decided by where liblinear stops (tol 1e-4), and that C moves LC by up to 0.1 points. To
# match upstream we replay liblinear's newGLMNET (solve_l1r_lr in scikit-learn's bundled
# liblinear linear.cpp) step by step, including its random coordinate order.

_LIBLINEAR_DRAWS: dict[int, np.ndarray] = {}


def _liblinear_draws(seed: int, n: int) -> np.ndarray:
    """First ``n`` outputs of ``std::mt19937`` seeded with ``seed`` (numpy's legacy
    RandomState uses the same MT19937 init_genrand seeding and yields the raw 32-bit words)."""
    cached = _LIBLINEAR_DRAWS.get(seed)
    if cached is None or len(cached) < n:
        cached = np.random.RandomState(seed).randint(0, 2**32, size=max(n, 4096), dtype=np.uint32).astype(np.int64)
        _LIBLINEAR_DRAWS[seed] = cached
    return cached


class _BoundedRand:
    """scikit-learn's ``bounded_rand_int`` (Lemire's method on mt19937), replayed from a cached stream."""

    def __init__(self, seed: int):
        self.seed, self.k, self.draws = seed, 0, _liblinear_draws(seed, 4096)

    def _next(self) -> int:
        if self.k >= len(self.draws):
            self.draws = _liblinear_draws(self.seed, 2 * len(self.draws))
        x = int(self.draws[self.k])
        self.k += 1
        return x

    def __call__(self, rng: int) -> int:
        m = self._next() * rng
        low = m & 0xFFFFFFFF
        if low < rng:
            t = (-rng) & 0xFFFFFFFF
            if t >= rng:
                t -= rng
                if t >= rng:
                    t %= rng
            while low < t:
                m = self._next() * rng
                low = m & 0xFFFFFFFF
        return m >> 32


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)); log1p(exp(.)) is several times faster than np.logaddexp and exact below 700."""
    return np.log1p(np.exp(z)) if z.max() < 700 else np.logaddexp(0.0, z)


def liblinear_seeds(random_state: int, n: int) -> list[int]:
    """The seeds scikit-learn hands liblinear along a path of ``n`` C values.

    ``_logistic_regression_path`` turns ``random_state`` into one ``RandomState`` and every
    liblinear call on the path draws its seed from it (``randint(2**31 - 1)``): the k-th C of
    a cross-validation path (ascending C) gets the k-th draw, a refit on one C the first.
    """
    rs = np.random.RandomState(random_state)
    return [int(rs.randint(np.iinfo(np.int32).max)) for _ in range(n)]


def fit_l1_liblinear(X: np.ndarray, y: np.ndarray, weight: np.ndarray, C: float,
                     seed: int, tol: float = 1e-4, max_iter: int = 100) -> np.ndarray:
    """The same objective as :func:`fit_l1_logistic`, solved the way liblinear solves it.

    A replay of liblinear's ``solve_l1r_lr`` (newGLMNET, Yuan, Ho & Lin 2012; liblinear is
    BSD-licensed: outer Newton steps, an inner randomly permuted coordinate descent on the
    quadratic model with shrinking, Armijo line search with sigma 0.01) as scikit-learn runs
    it for upstream: each soft-label row is liblinear's
    pair of instances (label +1 with weight ``C * w * y``, label -1 with ``C * w * (1 - y)``,
    zero-weight instances removed), stopping tolerance ``tol * max(min(#pos, #neg), 1) / #instances``
    on the summed minimum-norm subgradient relative to the first iteration. The quadratic
    model only involves the 3x3 matrix ``X' D X``, so the inner loop runs on 3 numbers;
    results agree with scikit-learn to rounding (~1e-12). ``seed`` seeds liblinear's
    coordinate order (see :func:`liblinear_seeds`); tol / max_iter defaults are
    ``LogisticRegressionCV``'s.
    """
    n_feat = X.shape[1]
    cw = C * weight
    c_pos = cw * y
    pos, neg = int((c_pos > 0).sum()), int((cw - c_pos > 0).sum())
    n_inst = pos + neg
    eps = tol * max(min(pos, neg), 1) / n_inst
    nu, sigma, inner_eps = 1e-12, 0.01, 1.0
    rand = _BoundedRand(seed)
    w, wpd = [0.0] * n_feat, [0.0] * n_feat
    grad, hdiag, index = [0.0] * n_feat, [0.0] * n_feat, list(range(n_feat))
    XT = np.ascontiguousarray(X.T, dtype=float)
    pairs = [(a, b) for a in range(n_feat) for b in range(a, n_feat)]
    XX = np.array([XT[a] * XT[b] for a, b in pairs])  # X' D X = XX @ D, 6 numbers per iteration
    z = np.zeros(len(y))
    sp = _softplus(z)
    w_norm, gmax_old, gnorm1_init, qp_no_change = 0.0, np.inf, -1.0, 0
    for newton_iter in range(max_iter):
        p = np.exp(z - sp)  # logistic(z)
        g_vec = XT @ (cw * p - c_pos)
        Q = [[0.0] * n_feat for _ in range(n_feat)]
        for (a, b), q in zip(pairs, (XX @ (cw * p * (1 - p))).tolist()):
            Q[a][b] = Q[b][a] = q
        gmax_new, gnorm1_new, active = 0.0, 0.0, n_feat
        s = 0
        while s < active:
            j = index[s]
            hdiag[j], grad[j] = nu + Q[j][j], float(g_vec[j])
            gp, gn = grad[j] + 1, grad[j] - 1
            violation = 0.0
            if w[j] == 0:
                if gp < 0:
                    violation = -gp
                elif gn > 0:
                    violation = gn
                elif gp > gmax_old / n_inst and gn < -gmax_old / n_inst:  # outer shrinking
                    active -= 1
                    index[s], index[active] = index[active], index[s]
                    continue
            else:
                violation = abs(gp) if w[j] > 0 else abs(gn)
            gmax_new = max(gmax_new, violation)
            gnorm1_new += violation
            s += 1
        if newton_iter == 0:
            gnorm1_init = gnorm1_new
        if gnorm1_new <= eps * gnorm1_init or qp_no_change >= 10:
            break
        qp_no_change += 1
        inner, qp_gmax_old, qp_active = 0, np.inf, active
        step = [0.0] * n_feat  # X @ step is liblinear's xTd
        while inner < 1000:
            qp_gmax_new, qp_gnorm1_new = 0.0, 0.0
            for k in range(qp_active):
                i = k + rand(qp_active - k)
                index[i], index[k] = index[k], index[i]
            s = 0
            while s < qp_active:
                j = index[s]
                h = hdiag[j]
                Qj = Q[j]
                G = grad[j] + (wpd[j] - w[j]) * nu
                for k in range(n_feat):
                    G += Qj[k] * step[k]
                gp, gn = G + 1, G - 1
                violation = 0.0
                if wpd[j] == 0:
                    if gp < 0:
                        violation = -gp
                    elif gn > 0:
                        violation = gn
                    elif gp > qp_gmax_old / n_inst and gn < -qp_gmax_old / n_inst:  # inner shrinking
                        qp_active -= 1
                        index[s], index[qp_active] = index[qp_active], index[s]
                        continue
                else:
                    violation = abs(gp) if wpd[j] > 0 else abs(gn)
                if gp < h * wpd[j]:
                    dz = -gp / h
                elif gn > h * wpd[j]:
                    dz = -gn / h
                else:
                    dz = -wpd[j]
                s += 1
                if abs(dz) < 1.0e-12:
                    continue
                dz = min(max(dz, -10.0), 10.0)
                qp_no_change = 0
                qp_gmax_new = max(qp_gmax_new, violation)
                qp_gnorm1_new += violation
                wpd[j] += dz
                step[j] += dz
            inner += 1
            if qp_gnorm1_new <= inner_eps * gnorm1_init:
                if qp_active == active:
                    break
                qp_active, qp_gmax_old = active, np.inf  # reactivate the shrunk coordinates
                continue
            qp_gmax_old = qp_gmax_new
        w_norm_new = sum(abs(v) for v in wpd)
        delta = sum(grad[j] * (wpd[j] - w[j]) for j in range(n_feat)) + (w_norm_new - w_norm)
        xd = np.array(step) @ XT
        for _ in range(20):  # line search: halve the step until the Armijo condition holds
            z_new = z + xd
            sp_new = _softplus(z_new)
            cond = w_norm_new - w_norm - sigma * delta + float(cw @ (sp_new - sp) - c_pos @ xd)
            if cond <= 0:
                w_norm, w, z, sp = w_norm_new, list(wpd), z_new, sp_new
                break
            wpd = [(a + b) * 0.5 for a, b in zip(w, wpd)]
            w_norm_new = sum(abs(v) for v in wpd)
            delta *= 0.5
            xd = xd * 0.5
        if inner == 1:
            inner_eps *= 0.25
        gmax_old = gmax_new
    return np.array(w)


def group_kfold_test_folds(n_rows: int, n_splits: int) -> np.ndarray:
    """Fold of each row (one row = one group) as scikit-learn's ``GroupKFold`` without shuffle.

    GroupKFold deals groups, largest first (stable sort, then reversed), to the lightest fold.
    Upstream's groups are single soft-label rows (each duplicated once, so all of size 2):
    the last row goes to fold 0, the one before to fold 1, ... i.e. fold = (n - 1 - r) % k.
    """
    return (n_rows - 1 - np.arange(n_rows)) % n_splits


def upstream_cs(n_cs: int = 10) -> np.ndarray:
    """LogisticRegressionCV's grid for ``Cs=n_cs``: ``np.logspace(-4, 4, n_cs)``."""
    return np.logspace(-4, 4, n_cs)
