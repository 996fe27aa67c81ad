"""Images in: volumes and their geometry, file and DICOM readers, intensity normalisation, metrics.

What every other part builds on. May import only the standard library, numpy, SimpleITK (and
pydicom where DICOM is read); nothing else of LowResSegLib.
"""
