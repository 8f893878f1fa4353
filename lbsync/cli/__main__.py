"""`python -m lbsync.cli ...`: the same as `python -m lbsync ...`."""

from lbsync.cli.main import main

if __name__ == "__main__":
    main()
