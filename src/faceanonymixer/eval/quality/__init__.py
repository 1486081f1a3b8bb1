"""The generator/encoder quality report (``faceanonymixer model-report``, module ``report``) and its helpers:
``generation`` (seeded samples, W+ style mixing, grids), ``landmarks`` (detection on generated tensors, pose change),
``real_faces`` (held-out real-face sets), ``markdown`` (the report's table). Its metrics live in ``eval/metrics.py``."""
