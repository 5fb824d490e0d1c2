"""Every numerical tolerance the tests use, in one place.

Import as ``from tests.tolerances import RTOL_EXACT``.
"""

# float64 oracle comparisons (closed forms, dense Hessians, hand-computed updates).
RTOL_EXACT = 1e-10
ATOL_EXACT = 1e-12
# Iterative eigen-solvers compared against dense float64 answers.
RTOL_LANCZOS = 1e-6
# Finite differences (central, float64).
RTOL_FD = 1e-5
ATOL_FD = 1e-7
# float32 comparisons (fast path vs reference in single precision).
RTOL_F32 = 1e-5
ATOL_F32 = 1e-6
# Statistical tests of stochastic estimators (fixed seeds): |estimate - exact| < Z * stderr.
STDERR_Z = 4.0
# Power iteration run to a tight tolerance, compared with dense float64 eigenvalues.
RTOL_POWER = 1e-6
