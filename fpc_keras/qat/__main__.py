"""`python -m fpc_keras.qat RUN OUT`: the QAT export's child process (started by `fpc-keras export`)."""
import sys

from . import main

sys.exit(main())
