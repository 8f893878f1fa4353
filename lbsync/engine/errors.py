"""The errors of the engine client: each tells a person what went wrong and what to do."""

from __future__ import annotations

from typing import Final


class DockerError(Exception):
    """Anything that went wrong talking to the engine."""


class EngineUnreachable(DockerError):
    """No connection could be made, or it was lost before an answer."""


class PermissionDenied(DockerError):
    """The socket exists but this user may not open it."""


class ApiVersionTooOld(DockerError):
    """The engine speaks only API versions older than lbsync supports."""


class StreamError(DockerError):
    """The events stream broke: cut mid-line, not JSON, or closed by the engine."""


class ApiError(DockerError):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str, *, method: str, path: str) -> None:
        self.status = status
        self.engine_message = message
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: engine answered {status}: {message}")


class BadRequest(ApiError):
    """400: the engine did not accept the request's parameters."""


class NotFound(ApiError):
    """404: no such container, exec or network (often: it was removed meanwhile)."""


class Conflict(ApiError):
    """409: the object is in a state that forbids this (e.g. kill of a stopped container).

    Podman says the same with a 500 "container state improper" (`status` stays 500) and,
    for `top`, with an empty 200.
    """


class ServerError(ApiError):
    """5xx: the engine failed; retry later, and see the engine's log."""


#: Podman answers 500 where Docker answers 4xx; its message ends with the libpod error
#: ("...: container state improper"), which tells the class Docker's status would give.
_PODMAN_500_CAUSES: Final[tuple[tuple[str, type[ApiError]], ...]] = (
    ("container state improper", Conflict),  # kill/exec of a stopped container (Docker: 409)
    ("invalid signal", BadRequest),  # kill with an unknown signal (Docker: 400)
)


def api_error(status: int, message: str, method: str, path: str) -> ApiError:
    cls: type[ApiError]
    if status == 500:
        # Podman: so callers that treat Conflict as "not running" work on both engines.
        # `status` stays the real one (500).
        for cause, podman_cls in _PODMAN_500_CAUSES:
            if cause in message:
                return podman_cls(status, message, method=method, path=path)
    if status == 400:
        cls = BadRequest
    elif status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status >= 500:
        cls = ServerError
    else:
        cls = ApiError
    return cls(status, message, method=method, path=path)
