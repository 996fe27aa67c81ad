"""ITK's own messages, kept off the user's terminal and cut to the one line that says what went wrong.

Shared by the file reader (:mod:`LowResSegLib.images.io`) and the DICOM reader
(:mod:`LowResSegLib.images.dicomread`), which both call SimpleITK.
"""

import contextlib
import re

import SimpleITK as sitk

__all__ = ["itk_reason", "quiet_itk"]


def itk_reason(exc):
    """The one informative line of a multi-line ITK exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    nrrd_lines = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd_lines:
        return nrrd_lines[-1][len("[nrrd]"):].strip()[:200]
    for line in lines:
        if "ERROR:" in line:
            line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line.split("ERROR:", 1)[1].strip())
            line = re.sub(r"^File cannot be read: .* for reading\.?$", "its header or data could not be read", line)
            return line.rstrip(".")[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


@contextlib.contextmanager
def quiet_itk():
    """Keep ITK's raw 'WARNING: In /tmp/SimpleITK-build/...' lines off the user's terminal.

    Whatever they report that matters is checked and said in our own words instead.
    """
    was = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was)
