"""The registry a cell's images go to: its credentials, what its errors mean, and whether it already holds an image.

`push` pushes to it; `build` looks a cell's content tag up in it first, since an image whose content tag is there was
tested before it was pushed (`test` and `push` then read that from the build report). The lookup goes through the
engine (distribution inspect), which reads the docker config's credentials as a push does; REGISTRY_USER /
REGISTRY_PASSWORD are given to it when set.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from . import grammar
from .errors import UsageError
from .secrets import Secrets

TRANSIENT_RE = re.compile(
    r"connection refused|connection reset|broken pipe|\bEOF\b|i/o timeout|TLS handshake timeout|timed out"
    r"|(status|code)[: ]+5\d\d|\b50[0-4] [A-Z]|internal server error|bad gateway|service unavailable"
    r"|gateway timeout|too many requests|toomanyrequests",
    re.IGNORECASE,
)
AUTH_RE = re.compile(
    r"unauthori[sz]ed|authentication required|no basic auth credentials|denied|forbidden|\b401\b|\b403\b"
    r"|incorrect username or password",
    re.IGNORECASE,
)


class PushError(Exception):
    """A push that failed and is not worth retrying."""


class TransientPushError(PushError):
    """Connection refused or reset, a 5xx: worth another attempt after a pause."""


class AuthError(PushError):
    """The registry refused the credentials (or there were none): never retried."""


def classify(message: str) -> PushError:
    if AUTH_RE.search(message):
        return AuthError(message)
    if TRANSIENT_RE.search(message):
        return TransientPushError(message)
    return PushError(message)


class Scrubber(Secrets):
    """Masks the registry password in every form (plain, URL-quoted, base64 of user:password) and every credential
    gpumatrix.secrets recognises: the one implementation behind every line the CLI prints (report.py redacts with
    the secrets `cli.main` remembers, REGISTRY_PASSWORD among them)."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_env(cls, env=os.environ) -> Credentials | None:
        """REGISTRY_USER / REGISTRY_PASSWORD; None when unset (the docker config's credentials then apply)."""
        user, password = env.get("REGISTRY_USER"), env.get("REGISTRY_PASSWORD")
        if not user and not password:
            return None
        if not user or not password:
            missing = "REGISTRY_USER" if not user else "REGISTRY_PASSWORD"
            raise UsageError(f"{missing} is not set: give both REGISTRY_USER and REGISTRY_PASSWORD, or neither")
        return cls(user, password)


# What the engine says when the registry answers but holds no such tag or repository.
NOT_THERE_RE = re.compile(r"manifest unknown|name unknown|not found|\b404\b|no such manifest", re.IGNORECASE)


def explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc).strip()


class Unreachable(Exception):
    """The lookup got no answer worth acting on; the build goes on locally. The message is one line for the user."""


def find_pushed(client: docker.DockerClient, ref: str, creds: Credentials | None, scrub: Secrets) -> str | None:
    """The manifest digest `ref` has in its registry, or None when the registry holds no such tag.

    A registry that cannot be reached (or that wants credentials none were given for) raises Unreachable; one that
    refuses the credentials given in REGISTRY_USER / REGISTRY_PASSWORD is the user's to fix: UsageError, not retried.
    """
    host = grammar.registry_of_image(ref)
    auth = {"username": creds.username, "password": creds.password} if creds else None
    try:
        return client.images.get_registry_data(ref, auth_config=auth).id
    except (DockerException, RequestException) as exc:
        message = scrub(explain(exc))
    error = classify(message)
    if isinstance(error, AuthError):
        if creds is not None:
            raise UsageError(f"registry {host} refused the credentials of REGISTRY_USER={creds.username} for the "
                             f"lookup of {ref}: {_reason(message)}; check REGISTRY_USER / REGISTRY_PASSWORD") from None
        raise Unreachable(f"registry {host} wants credentials for the lookup ({_reason(message)}); "
                          "set REGISTRY_USER / REGISTRY_PASSWORD or log in with docker login")
    if NOT_THERE_RE.search(message) and not TRANSIENT_RE.search(message):
        return None
    raise Unreachable(f"registry {host} cannot be reached for the lookup ({_reason(message)})")


def _reason(message: str) -> str:
    """The part of the engine's message that says what happened: `("Get "https://ghcr.io/v2/": dial tcp: ... no
    such host")` -> `dial tcp: ... no such host`."""
    inner = re.search(r'\("?(.*?)"?\)\s*$', message, re.DOTALL)
    text = inner.group(1) if inner else message
    text = re.sub(r'^Get "[^"]*":\s*', "", text)
    return (text.splitlines() or ["no answer"])[0][:200]


class Lookup:
    """Content tags looked up in the repository the cells would be pushed to (`<registry>/<image>`). A registry that
    cannot be reached is said once (`say`), and then asked no more in this run: everything builds locally."""

    def __init__(self, repository: str, say, env=os.environ):
        self.repository = repository.rstrip("/")
        self.creds = Credentials.from_env(env)
        self.scrub = Scrubber()
        if self.creds:
            self.scrub.add(self.creds.password, self.creds.username)
        self.say = say
        self.gone = False

    def ref(self, content_tag: str) -> str:
        """`<registry>/<image>:<cell>-<sha12>` for a local content tag `<repository>:<cell>-<sha12>`."""
        return f"{self.repository}:{content_tag.rsplit(':', 1)[1]}"

    def cell_ref(self, cell: str) -> str:
        """The cell's moving tag there, `<registry>/<image>:<cell>`: its newest pushed image."""
        return f"{self.repository}:{cell}"

    def digest(self, client: docker.DockerClient, content_tag: str) -> str | None:
        if self.gone:
            return None
        try:
            return find_pushed(client, self.ref(content_tag), self.creds, self.scrub)
        except Unreachable as exc:
            self.gone = True
            self.say(f"{exc}; building locally")
            return None
