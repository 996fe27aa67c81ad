"""Front ends: the ``lowresseg`` command line, the demo, the resolution comparison, and the Slicer
module's side (a background child process, its wire format, and Slicer-free helpers).

The top layer: may import every other subpackage; nothing imports it. Never imports ``slicer``.
"""
