"""Derives the matrices of Winograd's F(m, r) minimal filtering (Cook-Toom with the points 0, 1, -1, 2, -2, ...
and infinity) with exact fractions, checks them on random integer inputs, and prints them.

A^T and G follow from the points; B^T is solved for exactly from the defining identity
A^T [(G g) . (B^T d)] = valid correlation of d with g. crates/alexnet/src/cpu/fast/winograd.rs uses F(2, 3)
(the same matrices up to the signs of rows, which cancel), winograd_5x5.rs uses F(3, 3) on the points 0, 1, -1, 2
exactly as printed here; F(2, 5) was tried for conv2 (see BENCHMARKS.md).

    python3 tools/winograd_matrices.py
"""
from fractions import Fraction as F
import random

def matrices(m, r, points):
    a = m + r - 1
    assert len(points) == a - 1
    # A^T (m x a): p_j^i, infinity column e_{m-1}
    AT = [[F(p) ** i for p in points] + [F(1) if i == m - 1 else F(0)] for i in range(m)]
    # G (a x r): p_j^k / N_j, infinity row e_{r-1}
    G = []
    for j, p in enumerate(points):
        N = F(1)
        for l, q in enumerate(points):
            if l != j:
                N *= F(p) - F(q)
        G.append([F(p) ** k / N for k in range(r)])
    G.append([F(1) if k == r - 1 else F(0) for k in range(r)])
    # Solve for BT (a x a): sum_j AT[i][j] G[j][k] BT[j][q] = [q == i + k]
    unknowns = a * a
    rows = []
    for i in range(m):
        for k in range(r):
            for q in range(a):
                row = [F(0)] * unknowns
                for j in range(a):
                    row[j * a + q] += AT[i][j] * G[j][k]
                rows.append((row, F(1) if q == i + k else F(0)))
    # Gaussian elimination (least-norm not needed if unique; check consistency)
    n = unknowns
    M = [r_[:] + [b] for r_, b in rows]
    piv_cols = []
    rank = 0
    for c in range(n):
        pr = next((i for i in range(rank, len(M)) if M[i][c] != 0), None)
        if pr is None:
            continue
        M[rank], M[pr] = M[pr], M[rank]
        pv = M[rank][c]
        M[rank] = [x / pv for x in M[rank]]
        for i in range(len(M)):
            if i != rank and M[i][c] != 0:
                f = M[i][c]
                M[i] = [x - f * y for x, y in zip(M[i], M[rank])]
        piv_cols.append(c)
        rank += 1
    for i in range(rank, len(M)):
        assert M[i][n] == 0, "inconsistent"
    sol = [F(0)] * n
    for i, c in enumerate(piv_cols):
        sol[c] = M[i][n]
    BT = [[sol[j * a + q] for q in range(a)] for j in range(a)]
    return AT, G, BT

def check(m, r, AT, G, BT):
    a = m + r - 1
    for _ in range(20):
        d = [F(random.randint(-9, 9)) for _ in range(a)]
        g = [F(random.randint(-9, 9)) for _ in range(r)]
        u = [sum(G[j][k] * g[k] for k in range(r)) for j in range(a)]
        v = [sum(BT[j][q] * d[q] for q in range(a)) for j in range(a)]
        y = [sum(AT[i][j] * u[j] * v[j] for j in range(a)) for i in range(m)]
        direct = [sum(d[i + k] * g[k] for k in range(r)) for i in range(m)]
        assert y == direct, (y, direct)

for m, r, pts in [(2, 3, [0, 1, -1]), (3, 3, [0, 1, -1, 2]), (2, 5, [0, 1, -1, 2, -2])]:
    AT, G, BT = matrices(m, r, pts)
    check(m, r, AT, G, BT)
    print(f"F({m}, {r}), points {pts} and infinity")
    for name, Mx in [("AT", AT), ("G", G), ("BT", BT)]:
        print(name)
        for row in Mx:
            print("  ", [str(x) for x in row])
