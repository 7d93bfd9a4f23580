"""The live state of a web config file: reloaded when the file or a file it names changes."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import OperatorError
from exporter.web.auth import BasicAuth
from exporter.web.config import WebConfig, load
from exporter.web.tls import peer_sans

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0


def _fingerprint(files: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for f in files:
        try:
            st = f.stat()  # follows symlinks: a Kubernetes secret swaps its ..data link
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


@dataclass(frozen=True)
class _State:
    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuth
    fingerprint: tuple[tuple[int, int, int], ...]


class WebSecurity:
    """The live state of a web config file, for exporter.web: TLS context, auth, headers.

    Built once at startup (errors exit 2 there), then reloaded when the file or a file it names
    changes. A reload that fails keeps the last good state and logs the error once; a reload that
    would switch TLS on or off is refused too (the listening socket cannot change its protocol).
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self._build(load(self.path))
        self._checked = clock()
        self._last_error: str | None = None

    @staticmethod
    def _build(config: WebConfig, previous: _State | None = None) -> _State:
        # The previous BasicAuth's cached answers carry over (exporter.web.auth): a reload must
        # not make Prometheus wait behind a flood of guesses for a bcrypt of its password.
        auth = BasicAuth(config.users, previous.auth if previous else None)
        return _State(config, config.context, auth, _fingerprint(config.files()))

    @property
    def tls_enabled(self) -> bool:
        return self._state.context is not None

    @property
    def auth_enabled(self) -> bool:
        return self._state.auth.enabled

    def describe(self) -> str:
        s = self._state
        parts = ["TLS on" if s.context is not None else "TLS off"]
        if s.config.tls is not None and s.config.tls.client_auth_type != "NoClientCert":
            parts.append(f"client certificates {s.config.tls.client_auth_type}")
        parts.append(f"basic auth for {len(s.auth.users)} user(s)" if s.auth.enabled
                     else "no basic auth")
        return ", ".join(parts)

    def current(self) -> _State:
        """The state to use for this request, reloading first if the files changed."""
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self._state
        with self._lock:
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return self._state
            self._checked = now
            return self._reload(force=False)

    def reload(self) -> bool:
        """Re-read the files now, changed or not (SIGHUP); whether the new state is in use."""
        with self._lock:
            self._checked = self._clock()
            before = self._state
            return self._reload(force=True).config is not before.config

    def _reload(self, force: bool) -> _State:
        state = self._state
        files = state.config.files()
        if not force and _fingerprint(files) == state.fingerprint:
            return state
        try:
            new = self._build(load(self.path), state)
            if (new.context is None) != (state.context is None):
                raise OperatorError("switching TLS on or off needs a restart")
        except OperatorError as exc:
            message = str(exc)
            if force or message != self._last_error:
                log.error("web config not reloaded, keeping the previous one: %s", message)
                self._last_error = message
            # Remember the broken files so the check is not redone for every request.
            self._state = _State(state.config, state.context, state.auth, _fingerprint(files))
            return self._state
        self._last_error = None
        self._state = new
        log.info("web config reloaded from %s (%s)", self.path, self.describe())
        return new

    # -- the hooks exporter.web calls ------------------------------------------------------

    def context(self) -> ssl.SSLContext:
        ctx = self.current().context
        assert ctx is not None, "context() is only called when TLS is on"
        return ctx

    def accept_peer(self, sock: ssl.SSLSocket) -> bool:
        """client_allowed_sans: the verified client certificate must carry one of them."""
        tls = self._state.config.tls
        if tls is None or tls.client_allowed_sans is None:
            return True
        sans = peer_sans(sock.getpeercert())
        return any(s in tls.client_allowed_sans for s in sans)

    def basic_auth(self) -> BasicAuth | None:
        """The basic auth to check this request against; None when no user is configured."""
        auth = self.current().auth
        return auth if auth.enabled else None

    def headers(self) -> Mapping[str, str]:
        return self._state.config.headers
