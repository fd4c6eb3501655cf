"""Background jobs of the SpineSSL module: the ``spine-ssl`` command line in a separate process.

Inside Slicer, ``PythonSlicer`` is a launcher that sets up the environment and runs the real
interpreter (``python-real``) as its *child*; stopping the launcher alone leaves the job running
and writing.  ``stop`` therefore ends the whole process tree, as SlicerMONAIAuto3DSeg's process
helper does (psutil).  ``read_output`` is the reader thread's body: it decodes every line leniently
and always ends with the end marker ``None``, so the panel never waits forever.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def parse_progress(line):
    """``"PROGRESS 3/10 extract"`` -> ``(3, 10, "extract")``; any other line -> ``None``."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != "PROGRESS" or "/" not in parts[1]:
        return None
    done, _, total = parts[1].partition("/")
    if not (done.isdigit() and total.isdigit()):
        return None
    return int(done), int(total), parts[2] if len(parts) > 2 else ""


def python_command() -> list[str]:
    """Slicer's Python: the ``PythonSlicer`` launcher when there is one, else this interpreter."""
    return [shutil.which("PythonSlicer") or sys.executable]


def start(args, launch):
    """Start ``python -m SpineSSLLib ARGS`` with ``launch`` (``slicer.util.launchConsoleProcess``);
    progress goes to stdout as ``PROGRESS n/total`` lines."""
    import SpineSSLLib

    lib_dir = str(Path(SpineSSLLib.__file__).resolve().parent.parent)
    env = {"SPINESSL_PROGRESS": "lines", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
           "PYTHONPATH": os.pathsep.join(p for p in (lib_dir, os.environ.get("PYTHONPATH", "")) if p)}
    return launch([*python_command(), "-m", "SpineSSLLib", *[str(a) for a in args]], updateEnvironment=env)


def read_output(process, q) -> None:
    """Put every output line of ``process`` on ``q`` (bytes decoded as UTF-8, undecodable bytes
    replaced), then ``None`` -- also when reading fails."""
    try:
        stream = getattr(process.stdout, "buffer", process.stdout)
        while True:
            raw = stream.readline()
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
            q.put(line.rstrip("\r\n"))
    except Exception as e:  # noqa: BLE001 - the panel must hear about it, whatever it is
        q.put(f"(output of the job could not be read: {type(e).__name__}: {e})")
    finally:
        try:
            process.stdout.close()
        except Exception:  # noqa: BLE001
            pass
        q.put(None)


def stop(process, timeout: float = 5.0) -> list[int]:
    """End ``process`` and every process it started (the launcher's ``python-real``, data-loader
    workers): terminate, wait, kill what is left.  Returns the process ids that were running."""
    import subprocess

    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for p in children:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    process.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    try:
        process.wait(timeout)  # the launcher is our child: Popen reaps it (its exit code stays readable)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
    return [process.pid] + [p.pid for p in children]
