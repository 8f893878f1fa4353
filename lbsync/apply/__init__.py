"""Apply: write the config, check it, find the proxy and reload it (signals, exec, sockets)."""
