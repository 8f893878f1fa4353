"""The daemon: debounced passes that carry each change from the registry to the proxy."""
