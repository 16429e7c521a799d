"""Credentials in the text gpumatrix shows people: recognised in every form a user can write them, and masked.

Two layers, both applied by `redact` (and so by every line report.py prints):

- Known secrets: the password (or token) of the torch index URL given with --index-url or GPUMATRIX_INDEX_URL,
  REGISTRY_PASSWORD, and the password in DOCKER_HOST. `cli.main` remembers them before anything runs. Each is masked
  wherever it appears, in its plain, URL-decoded, URL-quoted and base64 (of `user:password`, as in a basic-auth
  header or a docker config `auth`) forms.
- Patterns, for credentials nobody told us about: the userinfo of `scheme://user:pass@host` and of a scheme-less
  `user:pass@host/path`, the value of an `Authorization: Basic ...` header and of a docker config `"auth": "..."`.
"""

from __future__ import annotations

import base64
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping

from . import grammar
from .errors import UsageError

MASK = "***"

# scheme://userinfo@ : everything up to the last @ before the authority ends (a / ? # quote or whitespace).
URL_USERINFO = re.compile(r"(?<=://)[^/?#\s'\"<>]*@")
# user:password@host with no scheme, at the start of a token; never an image reference's tag@sha256:<hex>.
BARE_USERINFO = re.compile(
    r"(?<![^\s'\"(<=,;\[])[^\s/@:'\"<>]*:[^\s/@'\"<>]+@(?=[\w\[])(?![A-Za-z][\w+.-]*:[0-9a-fA-F]{32,})"
)
AUTH_HEADER = re.compile(r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer)\s+)[A-Za-z0-9+/_.~-]+=*")
AUTH_FIELD = re.compile(r"(?i)([\"'](?:auth|password|identitytoken|registrytoken)[\"']\s*:\s*)[\"'][^\"']*[\"']")


class Secrets:
    """A set of secrets, masked in every form (plain, URL-decoded, URL-quoted, base64 of user:secret) and on top of
    that every credential the patterns recognise. Call it on text meant for people."""

    def __init__(self, secrets: Iterable[str] | None = None):
        self.forms: list[str] = []
        self.mask = MASK
        for secret in secrets or []:
            self.add(secret)

    def add(self, secret: str | None, user: str | None = None) -> None:
        """Remember `secret` (a password or token) and, with `user`, the base64 of `user:secret`."""
        if not secret:
            return
        plains = {secret, urllib.parse.unquote(secret)}
        forms = set(plains)
        for plain in plains:
            forms |= {urllib.parse.quote(plain, safe=""), urllib.parse.quote(plain), urllib.parse.quote_plus(plain)}
        if user is not None:
            forms |= _pair_forms(user, secret)
        self._extend(forms)

    def add_url(self, url: str | None, token_alone: bool = True, loose: bool = False) -> None:
        """Remember the credentials in a URL's userinfo (with or without a scheme). A user name with no password is
        a token when `token_alone` (an index URL); not so for DOCKER_HOST, where ssh://user@host names a login.
        `loose`: for a value that is no valid URL, everything up to its last @ counts as userinfo."""
        if not url:
            return
        userinfo = url_userinfo(url, loose)
        if not userinfo:
            return
        user, sep, password = userinfo.partition(":")
        if sep and password:
            self.add(password, user)
        elif token_alone:  # https://token@host: the client sends basic auth `token:`
            self.add(user)
            self._extend(_pair_forms(user, ""))

    def _extend(self, forms: set[str]) -> None:
        forms.discard("")
        self.forms = sorted(set(self.forms) | forms, key=len, reverse=True)
        self.mask = _mask_for(self.forms)

    def clear(self) -> None:
        self.forms = []
        self.mask = MASK

    def __call__(self, text: str) -> str:
        for form in self.forms:  # longest first, so a form inside another goes with it
            text = text.replace(form, self.mask)
        mask = self.mask  # no character of it is in any secret: masking never makes a secret appear again
        text = URL_USERINFO.sub(lambda m: mask + "@", text)
        text = BARE_USERINFO.sub(lambda m: mask + "@", text)
        text = AUTH_HEADER.sub(lambda m: m.group(1) + mask, text)
        return AUTH_FIELD.sub(lambda m: f'{m.group(1)}"{mask}"', text)


def _pair_forms(user: str, password: str) -> set[str]:
    """base64 of `user:password` (standard and URL-safe; padded, and unpadded as a URL-safe token would be; raw and
    URL-decoded)."""
    forms = set()
    for name in {user, urllib.parse.unquote(user)}:
        for plain in {password, urllib.parse.unquote(password)}:
            pair = f"{name}:{plain}".encode()
            for encoded in (base64.b64encode(pair), base64.urlsafe_b64encode(pair)):
                forms |= {encoded.decode(), encoded.decode().rstrip("=")}
    return forms


def _mask_for(forms: list[str]) -> str:
    """Three times a character that occurs in no form: a mask can then never make a secret appear again."""
    used = set("".join(forms))
    for char in "*#~!^" + "".join(map(chr, range(0x2588, 0x2600))):
        if char not in used:
            return char * 3
    return MASK


def url_userinfo(url: str, loose: bool = False) -> str | None:
    """The `user:password` (or `token`) of `scheme://user:password@host/...` or of `user:password@host/...`.
    `loose`: everything before the last @ of the whole value (for a value no parser would split right)."""
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    rest = url[scheme.end():] if scheme else url
    authority = rest if loose else re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    return userinfo if at else None


def has_credentials(url: str) -> bool:
    return bool(url_userinfo(url))


def has_space_or_control(value: str) -> bool:
    return any(c.isspace() or unicodedata.category(c).startswith("C") for c in value)


KNOWN = Secrets()


def redact(text: str) -> str:
    """`text` with every known secret and every recognisable credential replaced by ***."""
    return KNOWN(text)


def shown(value: str) -> str:
    """A value for a message: redacted first, then quoted (repr escapes would hide a secret's plain form)."""
    return repr(redact(value))


def remember(secret: str | None, user: str | None = None) -> None:
    KNOWN.add(secret, user)


def remember_url(url: str | None, token_alone: bool = True, loose: bool = False) -> None:
    KNOWN.add_url(url, token_alone, loose)


def remember_environment(env: Mapping[str, str] = os.environ) -> None:
    """The secrets the environment may hold: the index URL's, the registry password, DOCKER_HOST's password."""
    remember_url(env.get("GPUMATRIX_INDEX_URL"))
    remember(env.get("REGISTRY_PASSWORD"), env.get("REGISTRY_USER") or "")
    remember_url(env.get("DOCKER_HOST"), token_alone=False)


def forget() -> None:
    KNOWN.clear()


def remember_options(argv: list[str], option: str = "--index-url") -> list[str]:
    """The values given to `option` in `argv` (also as `option=VALUE` or a prefix argparse accepts), remembered as
    index URLs before parsing, so that even an argparse error that echoes one shows it masked."""
    values = []
    for i, token in enumerate(argv):
        if token == "--":
            break
        name, eq, value = token.partition("=")
        if len(name) < 4 or not name.startswith("--") or not option.startswith(name):
            continue
        if not eq:
            if i + 1 >= len(argv):
                continue
            value = argv[i + 1]
        values.append(value)
        remember_url(value, loose=not valid_http_url(value))
    return values


def valid_http_url(url: str) -> bool:
    return index_url_problem(url) is None


def index_url_problem(url: str) -> str | None:
    """What keeps `url` from being a torch index URL: http(s), a host, no space or control character."""
    if not url:
        return "is empty"
    if has_space_or_control(url):
        return "holds a space or a control character"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": echoes nothing of the value
        return f"is not a URL ({exc})"
    try:
        parts.port  # noqa: B018 - ValueError for a port that is no number or out of range
    except ValueError:  # its message quotes the "port", which may be half a password written with a bare /
        return "has a port that is no number from 0 to 65535"
    if parts.scheme.lower() not in ("http", "https") or not url[len(parts.scheme):].startswith("://"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # credentials have a grammar of their own
    if not grammar.matches(grammar.INDEX_URL, bare):
        return "holds characters an index URL has no use for (quotes, $, backslashes, braces other than {variant})"
    return None


def check_index_url(url: str, source: str) -> None:
    """UsageError naming `source` (--index-url or GPUMATRIX_INDEX_URL) for a value that is no http(s) URL; the value
    is shown with its credentials masked (everything before its last @ counts as credentials then)."""
    problem = index_url_problem(url)
    if problem:
        remember_url(url, loose=True)
        raise UsageError(f"{source}: {shown(url)} {problem}; give the torch index as https://HOST/PATH "
                         "({variant} is replaced by the cell's variant, e.g. cu128)")


def one_line(exc: BaseException) -> str:
    """An exception nobody turned into a message, as one redacted line naming its file when it has one."""
    detail = (str(exc).splitlines() or [""])[0].strip()
    if isinstance(exc, OSError):
        detail = exc.strerror or detail
        files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        where = f"{' -> '.join(files)}: " if files else ""
    else:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
    if isinstance(exc, UnicodeDecodeError):
        detail = f"not {exc.encoding} text (byte {exc.start}: {exc.reason})"
    return redact(f"{where}{detail or type(exc).__name__}")[:400]
