"""Stand-in for DICOMLib.DICOMUtils.importDicom (Modules/Scripted/DICOMLib/DICOMUtils.py:486-501, v5.8.1).

As in Slicer it catches every exception and returns False; it indexes the folder into the database,
copying the files into the database's folder when ``copyFiles`` (else it indexes them where they are).
"""

imported = []


def importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False):
    import slicer

    try:
        (dicomDatabase or slicer.dicomDatabase).index(dicomDataDir, copyFiles)
    except Exception:
        return False
    imported.append((dicomDataDir, copyFiles))
    return True
