"""Runs: one planned, checked, all-or-nothing segmentation (``run.SegmentationRun``) and a tree of
studies (``batch``). The one path that the command line, the Slicer module and the PACS use.

May import inference, results, images and the repository.
"""
