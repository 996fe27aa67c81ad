"""Training side of LowResSeg (torch, nilearn): data, models, losses, trainer, export.

Nothing in the inference path imports this package.
"""
