"""Inference: engines (local onnxruntime or the remote edge server), graph optimisation, the
slice pipeline from a volume to labels, post-processing, and the choice of a model for a time budget.

May import :mod:`LowResSegLib.images`, :mod:`LowResSegLib.repository` and the client side of
:mod:`LowResSegLib.edge.protocol`. Needs numpy and onnxruntime only (torch never).
"""
