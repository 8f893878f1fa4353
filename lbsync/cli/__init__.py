"""The command line: `lbsync run|render|check|events|version`."""
