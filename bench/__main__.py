"""``python -m bench``: run the PFNet speed benchmark (``--help`` for the flags, ``--smoke`` for CI)."""
from bench.run import main

if __name__ == "__main__":
    main()
