import logging
import sys

from evals.cli import main

if __name__ == "__main__":  # vLLM spawns processes: the guard keeps them from rerunning the eval
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main())
