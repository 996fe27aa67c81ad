"""Engines run a model's ONNX graph on a batch of prepared slices.

Pre- and post-processing live in :mod:`LowResSegLib.pipeline`, one implementation
for every engine, so a local and a remote run of the same model agree exactly.
"""

import os

import numpy as np

from LowResSegLib.modelstore import ModelRepository


class Engine(object):
    """``card`` (the model card) and ``infer(batch[N,1,r,r] float32) -> (labels, probabilities)``."""

    card = None

    def infer(self, batch):
        raise NotImplementedError


class LocalEngine(Engine):
    """onnxruntime in this process; CUDA when the installed onnxruntime offers it."""

    def __init__(self, name, repository=None, threads=0, providers=None):
        import onnxruntime as ort

        repo = ModelRepository(repository)
        self.card = repo.card(name)
        path = repo.onnx_path(name)  # verifies the sha256 first
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        # numpy pre/post-processing runs between chunks: threads that spin-wait for the next
        # run steal those cores (measured: ~35 % slower end to end on 2 cores; docs/BENCHMARKS.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self.path = os.path.abspath(path)

    def infer(self, batch):
        r = self.card["input_size"]
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (1, r, r):
            raise ValueError("model %s expects slices [N,1,%d,%d], got %s" % (self.card["name"], r, r, batch.shape))
        labels, probs = self.session.run(["labels", "probabilities"], {"image": batch})
        return labels, probs
