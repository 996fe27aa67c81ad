"""The model repository: Triton layout on disk and the versioned model card, sha256-verified.

Shared by the inference engines and the edge server, so it must run on Python 3.6 (JetPack 4.6) with
the standard library alone; it imports nothing else of LowResSegLib.
"""
