"""`python -m lbsync ...`: the `lbsync` command, for a checkout that is not installed."""

from lbsync.cli.main import main

if __name__ == "__main__":
    main()
