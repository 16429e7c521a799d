"""The compatibility facts an index states, read from the index: `compat refresh` and `compat --check --online`.

The PyTorch index's simple pages for torch, torchvision and torchaudio list every wheel with its local version (the
variant: cu126, cu130, ...), its CPython tag and its platform; the PEP 658 metadata of a torchvision or torchaudio
wheel says which torch it requires. The nightly index does the same for A.B.C.devYYYYMMDD builds, and PyPI's torch
page shows releases the PyTorch index may not have yet. From those this module makes the rows of
data/compat-generated.yaml (compat.py reads them) and names every way the committed rows differ from the sources.
Facts no index states (archs, driver floors, cuDNN) stay hand-kept in compat.yaml.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from email.parser import HeaderParser
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import requests
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from . import bases, compat
from .errors import UsageError
from .project import write_atomic

COMPANIONS = ("torchvision", "torchaudio")
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
ACCEPT = f"{SIMPLE_JSON}, text/html;q=0.1"
TIMEOUT_S = 60
LINUX_X86_64 = re.compile(r"^(many)?linux(_\d+_\d+|1|2010|2014)?_x86_64$")


class SourceError(UsageError):
    """An index that cannot be reached, or that answers with something that is not its page: one line, exit 2."""


@dataclass(frozen=True)
class Link:
    filename: str
    url: str


@dataclass(frozen=True)
class Wheel:
    """A Linux x86_64 wheel of a page: its public version, its variant (the local label) and its CPythons."""

    version: Version
    variant: str | None
    pythons: frozenset[str]  # "3.11"; empty for a py3-none wheel, which any Python 3 takes
    url: str


@dataclass(frozen=True)
class Sources:
    index: str
    nightly: str
    pypi: str
    since: str

    @classmethod
    def from_facts(cls, index: str | None = None, nightly: str | None = None, pypi: str | None = None) -> Sources:
        wanted = compat.facts()["refresh"]
        return cls(index or wanted["index"], nightly or wanted["nightly"], pypi or wanted["pypi"], wanted["since"])


# ---- reading pages -----------------------------------------------------------------------------------------------


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.hrefs.append((self._href, "".join(self._text).strip()))
            self._href = None


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (requests.ConnectionError, requests.Timeout)) or (
        isinstance(exc, requests.HTTPError) and exc.response is not None and exc.response.status_code >= 500)


class PageReader:
    """GETs simple pages (PEP 691 JSON where the index offers it, else PEP 503 HTML) and wheel metadata files."""

    def __init__(self, attempts: int = 3, max_wait_s: float = 4):
        self.session = requests.Session()
        self.retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(min=1, max=max_wait_s),
                                 retry=retry_if_exception(_transient), reraise=True)

    def links(self, root: str, project: str, required: bool = True) -> list[Link]:
        """Every file link of `<root>/<project>/`. A page that is missing (unless not `required`), or whose links are
        not files of `project` (a login or error page), is a SourceError."""
        url = f"{root.rstrip('/')}/{project}/"
        resp = self._get(url, ACCEPT)
        if resp is None:
            if required:
                raise SourceError(f"{url} answered 404: no {project} on that index")
            return []
        kind = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if kind == SIMPLE_JSON:
            links = self._json_links(url, resp)
        elif kind in ("text/html", "") or "<a" in resp.text:
            links = self._html_links(url, resp.text)
        else:
            raise SourceError(f"{url} answered with {kind}, not a simple page of {project}")
        named = [link for link in links if _project_of(link.filename) == canonicalize_name(project)]
        if links and not named:
            raise SourceError(f"{url} answered with a page that is not the simple page of {project} "
                              f"(none of its {len(links)} links is a {project} wheel)")
        return named

    def metadata(self, wheel_url: str) -> str | None:
        """The wheel's PEP 658 METADATA file; None where the index serves none."""
        resp = self._get(f"{wheel_url}.metadata", "*/*")
        return None if resp is None else resp.text

    def _get(self, url: str, accept: str) -> requests.Response | None:
        try:
            resp = self.retrying(self._send, url, accept)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise SourceError(f"cannot reach {urlsplit(url).netloc} for {url} ({type(exc).__name__})") from None
        except requests.HTTPError as exc:
            raise SourceError(f"{url} answered {exc.response.status_code}") from None
        return None if resp.status_code == 404 else resp

    def _send(self, url: str, accept: str) -> requests.Response:
        resp = self.session.get(url, headers={"Accept": accept}, timeout=TIMEOUT_S)
        if resp.status_code >= 400 and resp.status_code != 404:
            resp.raise_for_status()
        return resp

    @staticmethod
    def _json_links(url: str, resp: requests.Response) -> list[Link]:
        try:
            files = resp.json()["files"]
            return [Link(f["filename"], urljoin(url, f["url"])) for f in files]
        except (ValueError, KeyError, TypeError):
            raise SourceError(f"{url} answered with JSON that is not a simple page (no `files`)") from None

    @staticmethod
    def _html_links(url: str, text: str) -> list[Link]:
        anchors = _Anchors()
        anchors.feed(text)
        links = []
        for href, label in anchors.hrefs:
            target = urldefrag(urljoin(url, href)).url
            links.append(Link(label or unquote(target.rsplit("/", 1)[-1]), target))
        return links


def _project_of(filename: str) -> str | None:
    try:
        return canonicalize_name(parse_wheel_filename(filename)[0])
    except InvalidWheelFilename:
        return None


def linux_wheels(links: list[Link]) -> list[Wheel]:
    """The wheels among the links that install on Linux x86_64 (pure ones too), free-threaded (cp313t) builds left
    out."""
    wheels = []
    for link in links:
        try:
            _, version, _, tags = parse_wheel_filename(link.filename)
        except InvalidWheelFilename:
            continue
        tags = [tag for tag in tags
                if (tag.platform == "any" or LINUX_X86_64.match(tag.platform)) and not tag.abi.endswith("t")]
        if not tags:
            continue
        pythons = frozenset(f"{tag.interpreter[2]}.{tag.interpreter[3:]}" for tag in tags
                            if re.fullmatch(r"cp3\d+", tag.interpreter))
        variant = str(version.local) if version.local else None
        wheels.append(Wheel(Version(version.public), variant, pythons, link.url))
    return wheels


# ---- making rows -------------------------------------------------------------------------------------------------


def _cuda_variants(wheels: list[Wheel]) -> list[str]:
    found = {w.variant for w in wheels if w.variant and re.fullmatch(r"cu\d+", w.variant)}
    return sorted(found, key=lambda variant: int(variant[2:]))


def _python_range(wheels: list[Wheel]) -> list[str]:
    pythons = sorted({p for w in wheels for p in w.pythons}, key=Version)
    return [pythons[0], pythons[-1]] if pythons else []


def _torch_requirement(metadata: str) -> Requirement | None:
    for line in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) == "torch" and not requirement.marker:
            return requirement
    return None


class Companions:
    """Which release of a companion (torchvision, torchaudio) goes with which torch release, from the metadata of one
    wheel per companion release: an exact `torch==X` pins it to X; a range (a stable-ABI build such as torchaudio
    2.11.1, `torch>=2.11`) serves every release in it that has no exact one."""

    def __init__(self, reader: PageReader, wheels: list[Wheel], since: Version):
        self.exact: dict[Version, Version] = {}
        self.ranges: list[tuple[Version, Requirement]] = []
        one_per_release: dict[Version, Wheel] = {}
        for wheel in sorted(wheels, key=lambda w: (w.version, w.variant or "")):
            one_per_release.setdefault(wheel.version, wheel)
        for version, wheel in one_per_release.items():
            if version.is_prerelease:
                continue
            requirement = _torch_requirement(reader.metadata(wheel.url) or "")
            if requirement is None:
                continue
            pins = [Version(spec.version) for spec in requirement.specifier if spec.operator == "=="]
            if pins and pins[0] >= since:
                self.exact[Version(pins[0].public)] = version
            elif not pins and requirement.specifier:
                self.ranges.append((version, requirement))

    def of(self, torch: Version) -> str | None:
        if torch in self.exact:
            return str(self.exact[torch])
        serving = [version for version, req in self.ranges if req.specifier.contains(torch, prereleases=True)]
        return str(max(serving)) if serving else None


def release_rows(reader: PageReader, sources: Sources, checked: str) -> dict[str, dict]:
    torch = linux_wheels(reader.links(sources.index, "torch"))
    since = Version(sources.since)
    by_release: dict[Version, list[Wheel]] = defaultdict(list)
    for wheel in torch:
        if wheel.version >= since and not wheel.version.is_prerelease:
            by_release[wheel.version].append(wheel)
    if not by_release:
        raise SourceError(f"{sources.index}/torch/ lists no Linux x86_64 torch release since {sources.since}")
    companions = {name: Companions(reader, linux_wheels(reader.links(sources.index, name, required=False)), since)
                  for name in COMPANIONS}
    rows = {}
    for release in sorted(by_release):
        wheels = by_release[release]
        rows[str(release)] = {"variants": _cuda_variants(wheels), "python": _python_range(wheels),
                              **{name: companions[name].of(release) for name in COMPANIONS},
                              "source": "index", "checked": checked}
    return rows


def nightly_rows(reader: PageReader, sources: Sources, checked: str) -> dict[str, dict]:
    """One row per release under development: the variants and CPythons of its newest nightly, and the companions
    built that day (their version without the date)."""
    newest: dict[str, list[Wheel]] = {}
    for wheel in linux_wheels(reader.links(sources.nightly, "torch")):
        if not wheel.version.is_devrelease:
            continue
        series = newest.setdefault(wheel.version.base_version, [])
        if series and wheel.version > series[0].version:
            series.clear()
        if not series or wheel.version == series[0].version:
            series.append(wheel)
    companions = {name: linux_wheels(reader.links(sources.nightly, name, required=False)) for name in COMPANIONS}
    rows = {}
    for base in sorted(newest, key=Version):
        wheels = newest[base]
        day = wheels[0].version.dev
        rows[base] = {"variants": _cuda_variants(wheels), "python": _python_range(wheels),
                      **{name: _same_day(companions[name], day) for name in COMPANIONS},
                      "source": "index", "checked": checked}
    return rows


def _same_day(wheels: list[Wheel], day: int | None) -> str | None:
    found = sorted({w.version.base_version for w in wheels if w.version.dev == day}, key=Version)
    return found[-1] if found else None


def pypi_releases(reader: PageReader, sources: Sources) -> dict[str, list[str]]:
    """torch releases on PyPI since `since` with Linux x86_64 wheels, each with its CPython range."""
    by_release: dict[Version, list[Wheel]] = defaultdict(list)
    for wheel in linux_wheels(reader.links(sources.pypi, "torch")):
        if wheel.version >= Version(sources.since) and not wheel.version.is_prerelease:
            by_release[wheel.version].append(wheel)
    return {str(release): _python_range(wheels) for release, wheels in sorted(by_release.items())}


@dataclass(frozen=True)
class Reading:
    rows: dict[str, dict[str, dict]]  # "torch" / "nightly" -> release -> row
    pypi: dict[str, list[str]]


def read_sources(sources: Sources, reader: PageReader | None = None, today: str | None = None) -> Reading:
    reader = reader or PageReader()
    checked = today or date.today().isoformat()
    return Reading({"torch": release_rows(reader, sources, checked), "nightly": nightly_rows(reader, sources, checked)},
                   pypi_releases(reader, sources))


# ---- the CUDA base images (hand-kept rows: told, never rewritten) ------------------------------------------------


def cuda_base_drifts(resolver: bases.Resolver) -> list[str]:
    """Per CUDA row of compat.yaml: its devel and runtime tags still on their registry (NVIDIA deletes end-of-life
    tags), and no newer patch of the minor with the same suffix. The rows stay hand-kept: a new patch brings its own
    driver floor and cuDNN, which no tag list states."""
    lines, listed = [], {}
    for cuda, row in compat.facts()["cuda"].items():
        if not row.get("patch"):
            continue
        for kind in ("devel", "runtime"):
            text = row[kind].format(patch=row["patch"], ubuntu=row["ubuntu"])
            ref = bases.parse_reference(text)
            client = resolver.client(ref)
            key = (client.base_url, ref.path)
            if key not in listed:
                listed[key] = client.tags(ref.path) or []
            tags = listed[key]
            if ref.tag not in tags:
                lines.append(f"CUDA {cuda}: {text} is gone from {client.host}")
            if kind != "devel":
                continue
            newer = bases.newest_patch(ref.tag, tags)
            if newer and Version(newer.split("-")[0]) > Version(row["patch"]):
                lines.append(f"CUDA {cuda}: newer patch {newer} on {client.host} (compat.yaml pins {row['patch']}; "
                             "move it by hand with the driver floor and cuDNN of that patch)")
            lines += _newer_ubuntu(cuda, row, ref.tag, tags, client.host)
    return lines


def _newer_ubuntu(cuda: str, row: dict, tag: str, tags: list[str], host: str) -> list[str]:
    """The same patch and image kind on a newer Ubuntu than the row's (NVIDIA adds one for some patches)."""
    pattern = re.compile(re.escape(tag).replace(re.escape(f"ubuntu{row['ubuntu']}"), r"ubuntu(\d+\.\d+)") + "$")
    found = sorted((m.group(1) for m in map(pattern.match, tags) if m), key=Version)
    if found and Version(found[-1]) > Version(row["ubuntu"]):
        return [f"CUDA {cuda}: {tag.replace(row['ubuntu'], found[-1])} exists on {host} (compat.yaml uses Ubuntu "
                f"{row['ubuntu']})"]
    return []


# ---- writing and comparing ---------------------------------------------------------------------------------------


def dump_generated(rows: dict[str, dict[str, dict]], sources: Sources, header: str) -> str:
    lines = [header.rstrip("\n"), f"# Read from {sources.index}, {sources.nightly} and {sources.pypi}."]
    for kind in compat.ROW_KINDS:
        lines.append(f"{kind}:" + ("" if rows.get(kind) else " {}"))
        for release, row in rows.get(kind, {}).items():
            flow = yaml.safe_dump(row, default_flow_style=True, sort_keys=False, width=10**6).strip()
            lines.append(f'  "{release}": {flow}')
    return "\n".join(lines) + "\n"


GENERATED_HEADER = """\
# Generated by `python build.py compat refresh` (`make compat`) from the pages named in compat.yaml `refresh:`.
# Do not edit: a refresh rewrites this file whole. Hand-kept facts and corrections go in compat.yaml (`torch_kept:`,
# `nightly_kept:`), whose fields win over these rows. `source: index` rows say the day they were read (`checked`).
#
# torch release -> CUDA wheel variants on the PyTorch index (every release also has `cpu`), CPython range (inclusive)
# of its Linux x86_64 wheels, and the torchvision and torchaudio releases that require it (null: none does).
# Nightlies are keyed by the release under development: the variants, CPythons and companions of the newest nightly.
"""


def refresh(sources: Sources, path: Path, reader: PageReader | None = None, today: str | None = None) -> list[str]:
    """Read the sources and rewrite the generated file (atomically; untouched when a source fails). What moved
    against what the file held before, and the releases still waiting on the index, are returned, for the summary and
    the pull request's body."""
    reading = read_sources(sources, reader, today)
    before = compat.read_generated(path) if path.exists() else {kind: {} for kind in compat.ROW_KINDS}
    write_atomic(path, dump_generated(reading.rows, sources, GENERATED_HEADER))
    return drifts(before, reading.rows) + waiting_on_index(reading)


def drifts(committed: dict[str, dict[str, dict]], fresh: dict[str, dict[str, dict]]) -> list[str]:
    """One line per way the committed rows differ from what the sources say now."""
    return [f"{what}: {how}" for what, how in row_changes(committed, fresh)]


def waiting_on_index(reading: Reading) -> list[str]:
    """Releases PyPI has and the PyTorch index not yet: no row can be made, so they are told, not failed."""
    on_index = set(reading.rows["torch"])
    return [f"torch {release}: on PyPI (Python {'-'.join(pythons)}), not on the PyTorch index yet"
            for release, pythons in reading.pypi.items() if release not in on_index]


def row_changes(committed: dict[str, dict[str, dict]], fresh: dict[str, dict[str, dict]]) -> list[tuple[str, str]]:
    """(the release, how it moved) for each way the committed rows differ from the fresh ones."""
    changes = []
    for kind, fresh_rows in fresh.items():
        label = "torch {}" if kind == "torch" else "torch {} nightly"
        old_rows = committed.get(kind, {})
        for release in sorted(set(old_rows) | set(fresh_rows), key=Version):
            what = label.format(release)
            changes += [(what, how) for how in _row_changes(old_rows.get(release), fresh_rows.get(release))]
    return changes


def _row_changes(old: dict | None, new: dict | None) -> list[str]:
    if old is None:
        return [f"new on the index (variants {' '.join(new['variants']) or 'none'}, Python {'-'.join(new['python'])})"]
    if new is None:
        return ["no longer on the index"]
    lines = [f"new variant {variant}" for variant in new["variants"] if variant not in old["variants"]]
    lines += [f"variant {variant} gone from the index" for variant in old["variants"]
              if variant not in new["variants"]]
    if list(old["python"]) != list(new["python"]):
        lines.append(f"Python {'-'.join(old['python'])} is now {'-'.join(new['python'])}")
    lines += [f"{name} {old.get(name) or 'none'} is now {new.get(name) or 'none'}" for name in COMPANIONS
              if old.get(name) != new.get(name)]
    return lines
