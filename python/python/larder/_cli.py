"""The ``larder`` command (console script): the command of larder's ``cli/`` crate,
built into this package's native module, run with this process's arguments."""

import signal
import sys

from . import _larder


def main():
    """Runs ``larder`` with ``sys.argv`` and exits with its status.

    Ctrl-C ends the command as it ends the standalone binary (killed by SIGINT, no
    traceback): Python's own handler would only run once the command returned.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    sys.exit(_larder._run_cli(["larder", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
