"""Benchmarks, one module per component, run by name with ``batchcraft bench NAME``.

Each ``bench_<component>.py`` registers its entry points with
:func:`batchcraft.registry.register_benchmark`; :func:`batchcraft.registry.benchmarks` imports
every ``bench_*`` module of this package to find them, so they work from an installed wheel and
from any folder. Each one checks correctness on its inputs first, then times the paths side by
side and writes JSON into :func:`batchcraft.utils.bench.results_dir`. A module also runs alone:
``python -m batchcraft.benchmarks.bench_adan --quick``. Nothing here is imported by
``import batchcraft``.
"""
