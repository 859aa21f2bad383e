"""`solve`: `solver.solve_gptq` called with the reference's keyword names."""

from keras_gptq.algorithm import solver


def solve(W, H, dXXT=None, group_params=None, **settings):
    """`solver.solve_gptq(W, H, solver.SolverSettings(**settings), ...)`,
    so a test can pass one set of keywords to ours and to the reference."""
    return solver.solve_gptq(W, H, solver.SolverSettings(**settings),
                             dXXT=dXXT, group_params=group_params)
