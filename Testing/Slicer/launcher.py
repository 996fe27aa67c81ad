"""Put the stand-in ``PythonSlicer`` launcher (bin/PythonSlicer, see its docstring) into a folder, as a
Slicer installation's ``bin`` has it: the launcher, its settings file naming the real interpreter, and
the folder on ``PATH`` (Slicer puts its ``bin`` there; ``slicer.util._executePythonModule`` @v5.8.1
l. 3865-3890 finds ``PythonSlicer`` with ``shutil.which``)."""

import os
import shutil
import stat
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def install_launcher(bin_dir, python_real=None):
    """``bin_dir/PythonSlicer`` (run by this interpreter) starting ``python_real`` (default: this
    interpreter) as its child; returns the launcher's path."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "PythonSlicer")
    with open(os.path.join(HERE, "bin", "PythonSlicer")) as f:
        body = f.read().split("\n", 1)[1]
    with open(path, "w") as f:
        f.write("#!%s\n%s" % (sys.executable, body))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    with open(os.path.join(bin_dir, "PythonSlicerLauncherSettings.ini"), "w") as f:
        f.write("[Application]\npath=%s\n" % (python_real or sys.executable))
    return path


def launcher_on_path(monkeypatch, bin_dir):
    """Install the launcher in ``bin_dir`` and put that folder first on ``PATH``."""
    path = install_launcher(bin_dir)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    assert shutil.which("PythonSlicer") == path
    return path


# --------------------------------------------------------------------------- processes, by PID (Linux /proc)


def descendants(pid):
    """The PIDs of every process below ``pid`` (children, grandchildren, ...), read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    """Whether ``pid`` runs (a zombie has ended: it only waits to be reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(condition, timeout=20.0, step=0.01):
    """Poll ``condition`` until it holds or ``timeout`` s passed; returns its last value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class SilentServer(object):
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a worker that talks to it
    (an edge server's URL) stays busy, without using the CPU, until it is killed."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()
