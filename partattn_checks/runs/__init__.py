"""Running fixture sets: image specs (sidecars) and the one fixture-set runner (``Session``)."""
