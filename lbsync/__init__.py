"""lbsync: keeps nginx and HAProxy in step with the containers on a Docker engine.

The package follows the pipeline, one folder per stage; a stage imports only the stages
below it (`lint-imports` holds it to that, see `[tool.importlinter]` in pyproject.toml):

    cli      lbsync run|render|check|events|version: wires the stages below together
    daemon   debounced passes: plan (pure: what a pass does) -> passes (does it), target state
    web      /healthz /metrics /status and the page, from a StatusSnapshot the daemon hands it
    apply    write the file atomically, check it, find the proxy, reload it (signals, exec,
             HAProxy's master and runtime sockets)
    render   the routing model through sandboxed Jinja2 templates into config bytes
    model    labels -> services -> (host, path) groups -> hosts, routes, upstreams; HAProxy slots
    state    the registry of containers, kept in step with the engine by the watcher
    engine   the Docker API client, its events stream, and what inspects and swarm answers
             parse into (`Container`)
    config   the schema, stated once, and its parsing

Data flows one way: engine events -> state -> model -> render -> apply, driven by the daemon.
"""

__version__ = "0.1.0"
