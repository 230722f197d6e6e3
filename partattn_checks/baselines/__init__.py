"""Baselines, a layer of their own between the checks and the runs: the on-disk store, what runs
they hold, the two verdicts and the one runner every front end calls.

* ``store``: the files (``metrics.json``, ``environment.json``, ``attention.safetensors``,
  ``paired.safetensors``), read and written atomically; ``summary``: the attention summary;
* ``sample``: what the layer reads of runs (``SeedRun``, ``SeedSample``);
* ``policy``: how baselines are judged and written (``BaselinePolicy``) and the seeds;
* ``noise`` (the seed-spread verdict), ``paired`` and ``floor`` (the paired verdict and its numeric
  floor), ``judge`` (stored baseline + this run's samples -> the ``baseline`` check's result);
* ``runner``: ``BaselineRunner``, judging and writing; ``fixture_set``: the set's verdict.

Importing the package imports no numpy or torch; the modules that need them import them.
"""
