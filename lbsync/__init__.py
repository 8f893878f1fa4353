"""lbsync: keeps nginx and HAProxy in step with the containers on a Docker engine."""

__version__ = "0.1.0"
