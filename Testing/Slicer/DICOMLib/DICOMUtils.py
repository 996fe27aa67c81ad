"""Stand-in: records the folders imported into the DICOM database."""

imported = []


def importDicom(folder, dicomDatabase=None, copyFiles=False):
    imported.append(folder)
