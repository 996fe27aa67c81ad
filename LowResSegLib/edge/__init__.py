"""The edge server (a KServe v2 subset) that runs on a Jetson Nano: protocol, tokens, server.

Python 3.6 (JetPack 4.6): its import closure is this package, :mod:`LowResSegLib.repository`, numpy,
onnxruntime and the standard library, nothing more (Testing/test_architecture.py checks it).
``protocol`` is also what :class:`LowResSegLib.inference.engines.RemoteEngine` speaks as the client.
"""
