"""Stand-in for Slicer's DICOMLib (see Testing/Slicer/README.md)."""
