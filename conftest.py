"""Hypothesis profiles shared by every test folder: fresh random examples locally, the same ones in every CI run;
no deadlines (JIT). Both draw 20 examples per property, the count tests/test_conformance_meta.py shows to find every
planted bug of conformance/broken.py every time (make test runs under pytest-xdist: each worker loads this file)."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# The CUDA kernels run under numba's simulator unless a real GPU is asked for; numba reads this at import.
if os.environ.get("INVOLUTION_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
