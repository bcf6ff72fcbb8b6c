"""Benchmarks of tfdprobust against other frameworks (PyTorch/Opacus, JAX, tensorflow-privacy).

Not part of the installed package: run them from the repository's root, e.g.
``python -m benchmarks.benchmark_peers`` (the PyTorch and JAX entries need
``pip install -e ".[bench]"``) and ``python -m benchmarks.profile_step``.
"""
