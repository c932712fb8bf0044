import signal
import sys

from pipeline.cli import main

# Over a file-size limit (ulimit -f) the kernel kills the process with SIGXFSZ unless it is
# ignored; ignored, the write fails with EFBIG and becomes one line naming the file.
if hasattr(signal, "SIGXFSZ"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sys.exit(main())
