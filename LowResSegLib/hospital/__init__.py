"""Hospital interfaces: a DICOMweb PACS (``pacs``: find each study's FLAIR, segment it with
:class:`LowResSegLib.workflow.run.SegmentationRun`, store the DICOM-SEG back, never delete).

May import workflow and everything below it.
"""
