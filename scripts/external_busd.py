"""An external busd in a temp dir, for the scripts that measure against one.

    with external_busd.running(busd, ["--max-frame", "32MiB"]) as (daemon, sock):
        ...

`prefix` runs it under another command (valgrind). The socket appearing
is the sign it is up (bounded: 30 s); the daemon is stopped on the way out.
"""

import contextlib
import os
import subprocess
import tempfile
import time


@contextlib.contextmanager
def running(busd, args=(), prefix=()):
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "busd.sock")
        daemon = subprocess.Popen([*prefix, busd, "--socket", sock, *args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                if os.path.exists(sock):
                    break
                if daemon.poll() is not None:
                    raise SystemExit(f"busd exited with {daemon.returncode}")
                time.sleep(0.05)
            else:
                raise SystemExit("busd did not start")
            yield daemon, sock
        finally:
            daemon.terminate()
            daemon.wait(60)
