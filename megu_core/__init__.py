"""megu's library: datasets, models, training, forget requests, unlearning methods and metrics.

Usable on its own from a notebook; it never imports Prefect.
"""

__version__ = "0.1.0"
