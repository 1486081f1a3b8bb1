"""Evaluation: the method evaluation (``faceanonymixer evaluate``: evaluate, dataset, protection, scoring, attacks,
baselines, report, unlinkability), every metric (metrics), ``fr-eval``, ``calibrate``, and the generator/encoder
quality report (``faceanonymixer model-report``) in the ``quality`` sub-package."""
