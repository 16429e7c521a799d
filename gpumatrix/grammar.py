"""The grammar of every value a user's file or command line can put into a Dockerfile or a build request.

Each pattern admits only what its kind of value may hold (Docker's reference grammar, an http(s) URL, a Debian
package name, ...), so no value can carry a newline, a quote or a shell metacharacter into a rendered file.
"""

from __future__ import annotations

import re

# Docker's reference grammar (distribution/reference): [host[:port]/]path[:tag][@algo:hex]
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = (rf"^(?:{_HOST}(?::[0-9]{{1,5}})?/)?{_COMPONENT}(?:/{_COMPONENT})*"
                   r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")

# An http(s) index URL: scheme, host, optional port, then a path of URL-safe characters; `{variant}` is the one
# placeholder. No userinfo (told apart by secrets.has_credentials), no quotes, `$`, spaces or control characters.
INDEX_URL = (rf"^https?://{_HOST}(?::[0-9]{{1,5}})?"
             r"(?:/(?:[A-Za-z0-9._~%!*+,;=:/-]|\{variant\})*)?(?:\?[A-Za-z0-9._~%!*+,;=:/&-]*)?$")

# A Debian package as apt-get takes it: name[:arch][=version].
DEBIAN_PACKAGE = r"^[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:=[0-9][A-Za-z0-9.+~:-]*)?$"

# One exact requirement pin, name==version (PEP 508 name, PEP 440 version with an optional local label).
EXACT_PIN = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[0-9][A-Za-z0-9.+!_-]*$"

# A distribution name (PEP 508).
PROJECT_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$"

# An extension's pinned source: an http(s) URL (no userinfo, no quotes or spaces), or a path inside the project.
SOURCE_URL = (rf"^https?://{_HOST}(?::[0-9]{{1,5}})?/[A-Za-z0-9._~%!*+,;=:/-]*$")
PROJECT_PATH = r"^(?!/)(?!.*(?:^|/)\.\.(?:/|$))[A-Za-z0-9._+/-]+$"
# The file name an extension's source has in the build context and in the rendered Dockerfile.
SOURCE_FILE = r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.(?:tar\.gz|zip|whl)$"
SHA256 = r"^[0-9a-f]{64}$"
# A build environment variable of an extension: NAME and a value rendered inside double quotes, so no `"`, `$`, `\`,
# backtick or newline.
ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,63}$"
ENV_VALUE = r"^[A-Za-z0-9 ._+,:;=/@%-]{0,200}$"

# A Docker network mode for the build containers: default, host, none, or a network's name.
NETWORK = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def file_name_of(source: str) -> str:
    """The file name of an extension's URL or path: its last component, with GitHub's %2B for `+` undone."""
    return source.rstrip("/").rsplit("/", 1)[-1].replace("%2B", "+").replace("%2b", "+")


def matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


DOCKER_HUB = "docker.io"


def is_registry_host(component: str) -> bool:
    """Whether the first component of a reference names a registry host (Docker's rule): it has a dot or a port, or
    is localhost. Otherwise it is part of a Docker Hub path."""
    return "." in component or ":" in component or component == "localhost"


def registry_of_image(reference: str) -> str:
    """The registry an image reference pulls from: its first component when a path follows it and it names a host."""
    first, slash, _ = reference.partition("/")
    return first if slash and is_registry_host(first) else DOCKER_HUB


def registry_host(registry: str) -> str:
    """The host of a push target such as `ghcr.io/acme` or `127.0.0.1:5000` (which names no repository yet)."""
    first = registry.split("/", 1)[0]
    return first if is_registry_host(first) else DOCKER_HUB
