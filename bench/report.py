"""Shared by the benchmarks: each owns one marked section of docs/BENCHMARKS.md."""

import os

HEADER = ("# Benchmarks\n\nEvery table below is written by a script in `bench/`; the command, date and machine are\n"
          "given with each. Numbers are measured, never typed in.\n")


def replace_section(path, name, section_lines):
    """Replace (or append) the ``<!-- name:begin -->`` … ``<!-- name:end -->`` block of ``path``."""
    begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
    block = "\n".join([begin] + list(section_lines) + [end]) + "\n"
    old = open(path).read() if os.path.exists(path) else HEADER
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    with open(path + ".part", "w") as f:
        f.write(new)
    os.replace(path + ".part", path)
    return block
