"""Golden outputs of the SparseGPT step on a small random layer, for the Rust reference test.

A numpy transcription of the reference implementation's `fasterprune` (float64): dead inputs,
relative damping, inverse Hessian through Cholesky and its upper factor, blocks with an adaptive
w²/d² mask, OBS compensation inside the block and the lazy update after it, N:M groups.
Run by a developer (not CI): python3 tools/make_sparsegpt_fixtures.py
"""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fasterprune(W, H, sparsity, prunen, prunem, blocksize, percdamp):
    W = W.copy()
    H = H.copy()
    rows, columns = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * np.mean(np.diag(H))
    H[np.arange(columns), np.arange(columns)] += damp
    L = np.linalg.cholesky(H)
    Hinv = np.linalg.inv(L @ L.T)
    Hinv = np.linalg.cholesky(Hinv).T  # upper factor
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / (np.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = np.sort(tmp.flatten())[int(tmp.size * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = np.zeros_like(W1, dtype=bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / (np.diag(Hinv1)[i:i + prunem].reshape((1, -1))) ** 2
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                for r in range(rows):
                    mask1[r, i + idx[r]] = True
            q = w.copy()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


def main():
    rng = np.random.default_rng(0)
    rows, cols, n = 12, 20, 64
    W = rng.normal(size=(rows, cols))
    X = rng.normal(size=(n, cols)) * rng.uniform(0.2, 2.0, size=cols)
    X[:, 3] = 0.0  # a dead input
    H = 2 * X.T @ X / n
    cases = []
    for name, sparsity, prunen, prunem in [("unstructured-50", 0.5, 0, 0), ("2of4", 0, 2, 4)]:
        out = fasterprune(W, H, sparsity, prunen, prunem, blocksize=8, percdamp=0.01)
        cases.append({"name": name, "sparsity": sparsity, "n": prunen, "m": prunem,
                      "pruned": out.tolist()})
    path = os.path.join(ROOT, "fixtures", "sparsegpt", "golden.json")
    with open(path, "w") as f:
        json.dump({"rows": rows, "cols": cols, "block": 8, "damp": 0.01, "weights": W.tolist(),
                   "hessian": H.tolist(), "cases": cases}, f)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
