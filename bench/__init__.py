"""pike_stream's benchmarks: one script per benchmark, run by path (``python bench/bench_noise.py …``), each
writing JSON and a report to ``bench/results/``.

Shared modules:

- ``runs.py``: a training run of the PiKE benchmarks (its config, a worker pool, finished runs kept and reused,
  the library's shipped defaults) and ``Runner``, which every PiKE benchmark uses;
- ``curves.py``: what is computed from a run's curves (final and steps-to-target scores), the shared report
  table and plot;
- ``corpora.py``: the benchmark corpora (headroom, multilingual, unequal);
- ``bench_mixer.run_child``: a child process measured by the I/O benchmarks (mixer, cache).

The PiKE benchmarks: ``bench_headroom.py`` (four domains, a memorised one among them), ``bench_spread.py``
(the noise benchmark's seed-to-seed spread, which picks its learning rate), ``bench_noise.py`` (en, code and
noise), ``bench_corpora.py`` (multilingual and unequal corpora), ``bench_overhead.py`` (PiKE's cost per step);
the noise floor of a paired comparison, ``bench_null.py``; the same questions in runs three times as long,
``bench_long.py`` (noise and headroom corpora) and ``bench_long_corpora.py`` (unequal and multilingual), and
PiKE's variance term at that length, ``bench_long_variance.py``; whether a variant of PiKE becomes its default,
``bench_variant.py`` (one tuning seed) and ``bench_adopt.py`` (three).
The data path: ``bench_mixer.py``, ``bench_cache.py``, ``bench_load.py``, ``bench_convert.py``.
"""
