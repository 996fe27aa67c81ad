"""Start a child process as the root of its own process tree, and stop the whole tree.

Inside 3D Slicer the child is ``PythonSlicer``, which is not Python but the CTK AppLauncher
renamed (Slicer's ``CMake/SlicerBlockInstallPython.cmake``): it starts the real interpreter,
``python-real``, as *its* child with ``QProcess::start`` and passes no signal on
(``Base/ctkAppLauncher.cpp`` of CTKAppLauncher 0.1.31, ``runProcess``). Killing the launcher alone
leaves the interpreter running, orphaned. SlicerMONAIAuto3DSeg says the same in its
``MONAIAuto3DSegLib/process.py`` ("proc.kill() does not work, that would only stop the launcher").

So the child is started as the leader of a new session (POSIX: ``setsid``; the launcher's own
children stay in its process group, since QProcess does not change it) and :func:`stop` sends
SIGKILL to the whole group. On Windows the child gets a new process group and :func:`stop` runs
``taskkill /T /F``, which ends the process and every process it started.

A normal end is *waited for* (:func:`exited`, then :func:`stop` only reaps what is left); the
launcher ends only after the interpreter it started has ended.

Python 3.9+ (Slicer 5.8); standard library only.
"""

import os
import signal
import subprocess

__all__ = ["start", "exited", "stop"]

_WINDOWS = os.name == "nt"


def start(args, **popen_kwargs):
    """``subprocess.Popen(args, **popen_kwargs)``, the child leading its own process tree."""
    if _WINDOWS:
        flags = popen_kwargs.pop("creationflags", 0)
        flags |= getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return subprocess.Popen(args, creationflags=flags, **popen_kwargs)
    return subprocess.Popen(args, start_new_session=True, **popen_kwargs)


def exited(process):
    """True once the child has ended (it never blocks)."""
    return process.poll() is not None


def stop(process, timeout=10.0):
    """Kill ``process`` and every process it started (its whole group / tree), then reap it.

    Safe to call after the child has ended: there is then nothing left to kill. Returns the exit code.
    """
    if _WINDOWS:
        _stop_windows(process, timeout)
    else:
        # The group's id is the leader's pid (setsid). While any member of the group lives, POSIX
        # forbids giving that number to a new process (fork: "shall not match any active process group
        # ID"), so this reaches our tree only; an empty group answers ESRCH.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process.poll() is None:
            process.kill()
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _stop_windows(process, timeout):
    if process.poll() is None:
        try:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except (OSError, subprocess.SubprocessError):
            pass
    if process.poll() is None:
        process.kill()
