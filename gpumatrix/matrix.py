"""Load and validate matrix.yaml: strict YAML (no duplicate keys, safe tags only) and a strict schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from packaging.requirements import InvalidRequirement, Requirement as PackagingRequirement
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StringConstraints, \
    ValidationError, model_validator

from . import grammar
from .errors import UsageError
from .project import read_input
from .secrets import has_credentials, redact

MAX_YAML_NODES = 20_000  # an alias bomb expands far past this; a real matrix stays far below it
MAX_YAML_DEPTH = 32  # a real matrix nests five levels deep

Version = Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?$")]
TorchVersion = Annotated[str, StringConstraints(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+(\.dev[0-9]{8})?$")]  # .devYYYYMMDD: nightly
Cuda = Annotated[str, StringConstraints(pattern=r"^([0-9]+\.[0-9]+|cpu)$")]
Arch = Annotated[str, StringConstraints(pattern=r"^sm_[0-9]{2,3}a?$")]
Layer = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
def _not_none(name: str) -> str:
    if name == "none":
        raise ValueError("`none` is what --flavour none means (the cells without a flavour); pick another name")
    return name


# A suffix of cell names and tags.
Flavour = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$"), AfterValidator(_not_none)]
ImageName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$")]
REGISTRY_PATTERN = r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"  # host[:port][/namespace...]
Registry = Annotated[str, StringConstraints(pattern=REGISTRY_PATTERN)]
Companion = Literal["torchvision", "torchaudio"]
Installer = Literal["uv", "pip"]
Resolver = Literal["uv", "pip-tools"]
AppStage = Literal["runtime", "devel"]
Builder = Literal["buildkit", "classic"]


def _without_credentials(url):
    if isinstance(url, str) and "://" in url and has_credentials(url.split()[0]):
        raise ValueError("holds credentials, which would be committed and rendered into docker/; "
                         "give the index URL with its credentials in GPUMATRIX_INDEX_URL or --index-url instead")
    return url


# Checked before the grammar, so a URL with credentials is refused for what it is, and never echoed.
IndexUrl = Annotated[str, BeforeValidator(_without_credentials), StringConstraints(pattern=grammar.INDEX_URL)]
ImageRef = Annotated[str, StringConstraints(pattern=grammar.IMAGE_REFERENCE)]
DebianPackage = Annotated[str, StringConstraints(pattern=grammar.DEBIAN_PACKAGE)]
Network = Annotated[str, StringConstraints(pattern=grammar.NETWORK)]


def _not_torch_itself(pin: str) -> str:
    name = pin.split("==", 1)[0].lower().replace("_", "-")
    if name in ("torch", "torchvision", "torchaudio"):
        raise ValueError(f"{name} is pinned by the cell's `torch` and `companions`, not here")
    return pin


# A package installed in the torch stage, from the torch index, together with torch (the way out of a conflict with
# a version the torch stage would otherwise install).
TorchStagePin = Annotated[str, StringConstraints(pattern=grammar.EXACT_PIN), AfterValidator(_not_torch_itself)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _source_kind(source: str) -> str:
    if "://" in source:
        if has_credentials(source):
            raise ValueError("holds credentials, which would be committed; fetch the file and give its path instead")
        if not grammar.matches(grammar.SOURCE_URL, source):
            raise ValueError(f"{redact(source)!r} is not an http(s) URL of a file")
    elif not grammar.matches(grammar.PROJECT_PATH, source):
        raise ValueError(f"{source!r} is neither an http(s) URL nor a path inside the project")
    name = grammar.file_name_of(source)
    if not grammar.matches(grammar.SOURCE_FILE, name):
        raise ValueError(f"{name!r} is not the file name of an sdist (.tar.gz, .zip) or a wheel (.whl)")
    return source


def _build_env_name(name: str) -> str:
    if name in ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST"):
        where = "`max_jobs`" if name == "MAX_JOBS" else "from the cell's archs"
        raise ValueError(f"{name} is set by gpumatrix ({where}), not in `env`")
    return name


ExtensionSource = Annotated[str, AfterValidator(_source_kind)]
EnvName = Annotated[str, StringConstraints(pattern=grammar.ENV_NAME), AfterValidator(_build_env_name)]
EnvValue = Annotated[str, StringConstraints(pattern=grammar.ENV_VALUE)]
MaxJobs = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,2}$")]  # YAML numbers keep their text


def _plain_requirement(text: str) -> str:
    try:
        req = PackagingRequirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"{text!r} is not a requirement: {exc}") from None
    if req.url:
        raise ValueError(f"{text!r}: name a package and its versions here, not a URL")
    _not_torch_itself(f"{req.name}==0")
    return text


# What an extension needs at run time besides torch (einops for flash-attn): resolved into the cell's lock.
ExtensionRequirement = Annotated[str, StringConstraints(max_length=200), AfterValidator(_plain_requirement)]


class Extension(_Strict):
    """A compiled extension: an sdist built against the cell's torch, or a prebuilt wheel made for it, each pinned by
    its sha256."""

    name: Annotated[str, StringConstraints(pattern=grammar.PROJECT_NAME)]
    sdist: ExtensionSource | None = None
    wheel: ExtensionSource | None = None
    sha256: Annotated[str, StringConstraints(pattern=grammar.SHA256)]
    env: dict[EnvName, EnvValue] = {}
    max_jobs: MaxJobs | None = None
    build_requires: list[Annotated[str, StringConstraints(pattern=grammar.EXACT_PIN)]] = []
    requires: list[ExtensionRequirement] = []

    @model_validator(mode="after")
    def _one_source(self):
        if (self.sdist is None) == (self.wheel is None):
            raise ValueError("give exactly one of `sdist` (built against the cell's torch) and `wheel` (prebuilt)")
        source = self.sdist or self.wheel
        if self.sdist is not None and source.endswith(".whl"):
            raise ValueError("`sdist` names a wheel; a prebuilt wheel goes under `wheel`")
        if self.wheel is not None and not source.endswith(".whl"):
            raise ValueError("`wheel` names no .whl file; a source archive goes under `sdist`")
        if self.wheel is not None and (self.env or self.max_jobs or self.build_requires):
            raise ValueError("`env`, `max_jobs` and `build_requires` are for building an sdist; a prebuilt wheel "
                             "is installed as it is")
        return self


class Settings(_Strict):
    """What a cell gets beyond its versions; set for all cells under `settings`, per cell under `overrides`."""

    base_image: ImageRef | None = None
    runtime_image: ImageRef | None = None
    index_url: IndexUrl | None = None
    nightly_index_url: IndexUrl | None = None
    pre: bool | None = None
    archs: list[Arch] | None = None
    layers: list[Layer] | None = None
    companions: list[Companion] | None = None
    os_packages: list[DebianPackage] | None = None
    pip: Version | None = None
    installer: Installer | None = None  # what installs the app layer
    uv: Version | None = None  # the uv that installs the app layer, and the uv resolver of `make lock`
    resolver: Resolver | None = None  # what `make lock` resolves the app layers with: uv pip compile, or pip-compile
    app_stage: AppStage | None = None  # where the app layer is installed: on the runtime base, or the devel base
    network: Network | None = None
    builder: Builder | None = None  # what builds the images; unset: BuildKit where docker buildx answers
    torch_stage_pins: list[TorchStagePin] | None = None  # name==version, installed with torch from the torch index
    extensions: list[Extension] | None = None  # compiled extensions; an override's list replaces the settings' list


class Selector(_Strict):
    """Matches cells; each key takes one value or a list, and an absent key matches everything."""

    cuda: Cuda | list[Cuda] | None = None
    python: Version | list[Version] | None = None
    torch: TorchVersion | list[TorchVersion] | None = None

    def matches(self, cuda: str, python: str, torch: str) -> bool:
        return all(
            want is None or got == want or (isinstance(want, list) and got in want)
            for want, got in ((self.cuda, cuda), (self.python, python), (self.torch, torch))
        )


class Override(Settings):
    match: Selector


class Include(_Strict):
    """One more cell. With `flavour`, a second image on the torch stage of the plain cell, with its own layers."""

    cuda: Cuda
    python: Version
    torch: TorchVersion
    flavour: Flavour | None = None
    layers: list[Layer] | None = None


class Axes(_Strict):
    cuda: list[Cuda] = Field(min_length=1)
    python: list[Version] = Field(min_length=1)
    torch: list[TorchVersion] = Field(min_length=1)


class Defaults(_Strict):
    python: Version
    torch: dict[Cuda, TorchVersion] = {}


class Matrix(_Strict):
    image: ImageName
    registry: Registry
    axes: Axes
    defaults: Defaults
    include: list[Include] = []
    exclude: list[Selector] = []
    settings: Settings = Settings()
    overrides: list[Override] = []
    _source: Path = PrivateAttr(default=Path("matrix.yaml"))
    _lines: dict = PrivateAttr(default_factory=dict)

    def where(self, *loc) -> str:
        """`file:line: key` of a place in the matrix file, for messages about what is written there."""
        line = _line_for(tuple(loc), self._lines)
        key = _dotted(tuple(loc)) or "(top level)"
        return f"{self._source}:{line}: {key}" if line else f"{self._source}: {key}"


def load_matrix(path: Path) -> Matrix:
    """Read and validate a matrix file; every problem becomes one line of a UsageError."""
    text = read_input(path, "matrix file")
    data, lines = _parse_yaml(text, path)
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        described = dict.fromkeys(_describe(err, path, lines) for err in _one_per_key(exc.errors()))
        raise UsageError("\n".join(described)) from None
    matrix._source, matrix._lines = path, lines
    return matrix


_UNION_BRANCH = re.compile(r"^(str|bool|int|float|none|constrained-str|function-.*|.*\[.*\])$")


def _clean_loc(loc) -> tuple:
    """The key path without the union-branch names pydantic puts into locations."""
    return tuple(p for p in loc if isinstance(p, int) or not _UNION_BRANCH.match(p))


def _one_per_key(errors: list[dict]) -> list[dict]:
    """A value that fails every branch of a union gives one error per branch; keep the first per key path."""
    seen: dict[tuple, dict] = {}
    for err in errors:
        seen.setdefault(_clean_loc(err["loc"]), err)
    return list(seen.values())


def _describe(err: dict, path: Path, lines: dict[tuple, int]) -> str:
    loc = _clean_loc(err["loc"])
    where = _line_for(loc, lines)
    key = _dotted(loc) or "(top level)"
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    elif err["type"] == "string_pattern_mismatch":
        message = f"{redact(str(err['input']))!r} is not valid here ({_pattern_hint(loc)})"
    line = f"{path}:{where}: {key}: {message}" if where else f"{path}: {key}: {message}"
    return line.replace("\n", "\\n").replace("\r", "\\r")


def _pattern_hint(loc: tuple) -> str:
    names = [p for p in _clean_loc(loc) if isinstance(p, str)]
    last = "env" if names[-2:-1] == ["env"] else (names[-1] if names else "")
    hints = {
        "archs": "an arch is sm_NN, e.g. sm_80",
        "cuda": "a CUDA version such as 12.8, or cpu",
        "image": "lower-case repository name",
        "registry": "a registry host[:port][/namespace]",
        "layers": "a layer is the name of a requirements/<name>.in file",
        "flavour": "a flavour is lower case letters and digits, dashes between, e.g. serve",
        "base_image": "an image reference such as nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04",
        "runtime_image": "an image reference such as nvidia/cuda:12.8.1-base-ubuntu24.04",
        "index_url": "an http(s) URL such as https://download.pytorch.org/whl/{variant}",
        "nightly_index_url": "an http(s) URL such as https://download.pytorch.org/whl/nightly/{variant}",
        "os_packages": "a Debian package name such as libgl1, optionally =version",
        "network": "a Docker network mode such as default or host",
        "torch_stage_pins": "an exact pin name==version such as fsspec==2024.12.0",
        "build_requires": "an exact pin name==version such as ninja==1.13.0",
        "name": "a distribution name such as flash-attn",
        "sha256": "64 lower-case hex digits (sha256sum of the file)",
        "max_jobs": "a whole number of parallel compile jobs, such as 4",
        "env": "a value of letters, digits, spaces and ._+,:;=/@%- (no quotes, $ or backslashes)",
    }
    return hints.get(last, "a version such as 3.11 or 2.7.1")


def _dotted(loc: tuple) -> str:
    out = ""
    for part in _clean_loc(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    keys = _clean_loc(loc)
    while keys:
        if keys in lines:
            return lines[keys]
        keys = keys[:-1]
    return None


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """Compose the YAML to nodes and build Python values ourselves, to catch duplicates and keep line numbers."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}:{_mark_line(exc)}: malformed YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise UsageError(f"{path}: the document is nested too deeply to be a matrix") from None
    if node is None:
        raise UsageError(f"{path}: the matrix file is empty")
    lines: dict[tuple, int] = {}
    budget = [MAX_YAML_NODES]
    return _value(node, (), lines, path, budget), lines



def _mark_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return str(mark.line + 1) if mark is not None else "?"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


_SAFE_SCALARS = {"str", "int", "float", "bool", "null"}


def _value(node: yaml.Node, loc: tuple, lines: dict, path: Path, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise UsageError(f"{path}: the document expands to more than {MAX_YAML_NODES} nodes (YAML alias bomb?)")
    line = node.start_mark.line + 1
    if len(loc) > MAX_YAML_DEPTH:  # also stops a recursive alias, which would nest forever
        raise UsageError(f"{path}:{line}: {_dotted(loc)}: nested deeper than {MAX_YAML_DEPTH} levels (recursive alias?)")
    lines.setdefault(loc, line)
    tag = node.tag.rsplit(":", 1)[-1]
    if isinstance(node, yaml.MappingNode) and tag == "map":
        return _mapping(node, loc, lines, path, budget)
    if isinstance(node, yaml.SequenceNode) and tag == "seq":
        return [_value(item, loc + (i,), lines, path, budget) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.ScalarNode) and tag in _SAFE_SCALARS:
        return _scalar(node, tag)
    raise UsageError(f"{path}:{line}: {_dotted(loc) or '(top level)'}: YAML tag {node.tag!r} is not allowed")


def _scalar(node: yaml.ScalarNode, tag: str) -> Any:
    # Numbers keep the text as written, so `python: 3.10` stays "3.10" instead of becoming 3.1.
    if tag in ("int", "float"):
        return node.value
    if tag == "bool":
        return node.value.lower() in ("true", "yes", "on")
    return None if tag == "null" else node.value


def _mapping(node: yaml.MappingNode, loc: tuple, lines: dict, path: Path, budget: list[int]) -> dict:
    out: dict = {}
    for key_node, value_node in node.value:
        if key_node.tag.endswith(":merge"):
            raise UsageError(f"{path}:{key_node.start_mark.line + 1}: {_dotted(loc)}: YAML merge keys are not allowed")
        key = _value(key_node, loc, {}, path, budget)
        if isinstance(key, (list, dict)):
            raise UsageError(f"{path}:{key_node.start_mark.line + 1}: {_dotted(loc)}: a key must be a plain value")
        if key in out:
            where = _dotted(loc + (key,))
            raise UsageError(f"{path}:{key_node.start_mark.line + 1}: {where}: duplicate key")
        lines[loc + (key,)] = key_node.start_mark.line + 1
        out[key] = _value(value_node, loc + (key,), lines, path, budget)
    return out
