"""Bearer-token files: one private file per secret, never a command line or a settings file.

The edge server reads its token with ``--token-file``; the Slicer module keeps the edge-server
token and the PACS credentials a user typed in such files (mode 0600) and stores only their
paths in Slicer's settings.
Python 3.6 (the edge server's closure); stdlib only.
"""

import os

__all__ = ["read_token", "write_token", "MIN_TOKEN_CHARS"]

MIN_TOKEN_CHARS = 16


def read_token(path, min_chars=MIN_TOKEN_CHARS):
    """The secret in ``path`` (first line); refuses a file others may read, or a secret under ``min_chars``."""
    mode = os.stat(path).st_mode
    if os.name == "posix" and mode & 0o077:
        raise ValueError("token file %s is readable by others (mode %o); run: chmod 600 %s" % (path, mode & 0o777, path))
    with open(path) as f:
        token = f.readline().strip()
    if len(token) < max(1, min_chars):
        raise ValueError("token in %s is shorter than %d characters; make one with: openssl rand -hex 32"
                         % (path, min_chars))
    return token


def write_token(path, token):
    """Write ``token`` to ``path``, readable by its owner only, replacing the file atomically."""
    token = str(token).strip()
    if not token or "\n" in token:
        raise ValueError("a token is one non-empty line")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    staged = os.path.join(folder, ".%s.%d.part" % (os.path.basename(path), os.getpid()))
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.remove(staged)
        raise
    return path
