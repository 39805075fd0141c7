import sys

from .cli import main

# guarded: spawn/forkserver workers re-import the main module
if __name__ == "__main__":
    sys.exit(main())
