"""What lbsync knows of the engine: the registry of containers, kept in step by the watcher."""
