"""Small helpers shared by several test files."""

import hashlib
import os
import shutil
import sys

import numpy as np


def installed_tool(name):
    """A console script of the environment running the tests (beside its python), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.access(here, os.X_OK) else shutil.which(name)


def snapshot(folder):
    """{relative path: (size, mtime_ns, sha256)} of every file under ``folder``: proves nothing changed."""
    out = {}
    for root, _, files in os.walk(str(folder)):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, str(folder))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def rotation(axis, degrees):
    """3×3 rotation about voxel/world axis ``axis``: oblique test geometries."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    m = np.eye(3)
    p, q = [x for x in range(3) if x != axis]
    m[p, p], m[p, q], m[q, p], m[q, q] = c, -s, s, c
    return m


def cube_phantom(shape, brain, cube):
    """An asymmetric test volume: a dim "brain" box with a bright off-centre cube, and the cube as truth."""
    img = np.zeros(shape, np.int16)
    img[brain] = 100
    img[cube] = 400
    truth = np.zeros(shape, np.uint8)
    truth[cube] = 1
    return img, truth


def self_signed_cert(folder):
    """A throw-away certificate for localhost / 127.0.0.1 made with the openssl command: (cert, key) paths."""
    import subprocess

    import pytest

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate (Debian package openssl)")
    cert, key = os.path.join(str(folder), "cert.pem"), os.path.join(str(folder), "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return cert, key
