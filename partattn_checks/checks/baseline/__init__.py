"""The baseline check's machinery: the on-disk store (seeds and samples), the noise model, the attention
summary and its drift, the compare engine. The check itself is ``check.py``."""
