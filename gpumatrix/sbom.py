"""The SBOM step: a CycloneDX bill of materials per image, read from the environment installed in the image.

A short-lived container of the image (no network, removed whatever happens) runs the venv's Python, which reports
`pip inspect` (every installed distribution with its metadata), `dpkg-query` (the OS packages, when the image has
dpkg) and /etc/os-release. cyclonedx-python-lib turns that into a Bom: the image as the metadata component (its
image id and io.gpumatrix.* labels as properties), one component per Python distribution (pkg:pypi purls, local
versions such as 2.13.0+cpu kept), one per installed deb (pkg:deb purls with arch, distro and upstream source), the
OS as an operating-system component, and the dependencies pip's metadata names. The JSON is validated against the
CycloneDX schema before it is written (atomically) to out/sbom/<cell>.cdx.json.

`build.py push` attaches the SBOM of the image it pushes to the catalog entry; a file that records another image id
is made again, never attached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import ExternalReference, ExternalReferenceType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from docker.errors import APIError, DockerException, ImageNotFound
from packageurl import PackageURL
from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import engine, layout
from .cells import Cell
from .errors import UsageError, WorkFailed
from .select import cell_filters
from .project import Project, write_atomic

# 1.6, not the library's newest 1.7: the scanners people point at these files (grype, trivy) read 1.6.
SCHEMA = SchemaVersion.V1_6
FORMAT = "CycloneDX 1.6 JSON"
SUFFIX = ".cdx.json"
IMAGE_ID_PROPERTY = "gpumatrix:image-id"
IMAGE_REF_PROPERTY = "gpumatrix:image"
# Status first: `dpkg-query -W` also lists removed packages whose config files remain ("rc").
DPKG_FORMAT = r"${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n"
# Runs inside the image with the venv's Python: one JSON document on stdout.
PROBE = """
import json, shutil, subprocess, sys

def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-2000:]}

os_release = ""
for path in ("/etc/os-release", "/usr/lib/os-release"):
    try:
        with open(path) as fh:
            os_release = fh.read()
        break
    except OSError:
        pass
dpkg = shutil.which("dpkg-query")
print(json.dumps({
    "pip": run([sys.executable, "-m", "pip", "inspect"]),
    "dpkg": run([dpkg, "-W", "-f", DPKG_FORMAT]) if dpkg else None,
    "os_release": os_release,
}))
""".replace("DPKG_FORMAT", json.dumps(DPKG_FORMAT))

Log = Callable[[str], None]


@dataclass(frozen=True)
class Environment:
    """What the image has installed, as its own tools report it."""

    inspect: dict  # the `pip inspect` document
    dpkg: str  # DPKG_FORMAT lines; empty when the image has no dpkg
    os_release: str  # /etc/os-release; empty when absent


@dataclass(frozen=True)
class ImageInfo:
    ref: str  # the reference the SBOM was asked for
    image_id: str
    repository: str
    cell: str
    labels: dict[str, str]


@dataclass
class SbomResult:
    cell: str
    path: Path
    image_id: str
    components: int = 0
    error: str | None = None


# --- the installed environment -> a Bom ------------------------------------------------------------------------------


def os_release_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def python_purl(name: str, version: str) -> PackageURL:
    return PackageURL("pypi", name=canonicalize_name(name), version=version)


def python_component(entry: dict) -> Component:
    meta = entry["metadata"]
    purl = python_purl(meta["name"], meta["version"])
    refs = []
    url = (entry.get("direct_url") or {}).get("url")
    if url:
        refs.append(ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url)))
    return Component(
        type=ComponentType.LIBRARY, name=meta["name"], version=meta["version"], purl=purl, bom_ref=purl.to_string(),
        description=meta.get("summary") or None, licenses=python_licenses(meta), external_references=refs,
    )


def python_licenses(meta: dict) -> list:
    """License-Expression (metadata 2.4) when there is one, else a short one-line License field (some packages put
    the whole license text there, which names nothing)."""
    value = meta.get("license_expression") or meta.get("license") or ""
    value = value.strip()
    if not value or "\n" in value or len(value) > 120:
        return []
    return [LicenseFactory().make_from_string(value)]


def python_components(inspect: dict) -> dict[str, tuple[Component, dict]]:
    """canonical name -> (component, pip inspect entry) for every installed distribution."""
    found = {}
    for entry in inspect.get("installed") or []:
        meta = entry.get("metadata") or {}
        if meta.get("name") and meta.get("version"):
            found.setdefault(canonicalize_name(meta["name"]), (python_component(entry), entry))
    return found


def requirement_names(entry: dict, environment: dict) -> set[str]:
    """Canonical names of the distributions this one needs in this environment (no extras)."""
    names = set()
    for line in entry["metadata"].get("requires_dist") or []:
        try:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**environment, "extra": ""}):
                names.add(canonicalize_name(req.name))
        except (InvalidRequirement, InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
            continue
    return names


def deb_purl(name: str, version: str, arch: str, source: str, source_version: str, os_fields: dict) -> PackageURL:
    distro_id = os_fields.get("ID") or "debian"
    qualifiers = {"arch": arch}
    if os_fields.get("VERSION_ID"):
        qualifiers["distro"] = f"{distro_id}-{os_fields['VERSION_ID']}"
    if source and (source != name or source_version != version):
        # The source package is what Debian's and Ubuntu's security trackers list (bsdutils comes from util-linux).
        qualifiers["upstream"] = source if source_version == version else f"{source}@{source_version}"
    return PackageURL("deb", namespace=distro_id, name=name, version=version, qualifiers=qualifiers)


def deb_components(dpkg: str, os_fields: dict) -> list[Component]:
    components = {}
    for line in dpkg.splitlines():
        parts = line.split("\t")
        if len(parts) != 6 or len(parts[0]) < 2 or parts[0][1] != "i":  # only installed packages
            continue
        _, name, version, arch, source, source_version = parts
        purl = deb_purl(name, version, arch, source or name, source_version or version, os_fields)
        components.setdefault(purl.to_string(), Component(
            type=ComponentType.LIBRARY, name=name, version=version, purl=purl, bom_ref=purl.to_string()))
    return list(components.values())


def os_component(os_fields: dict) -> Component | None:
    if not os_fields.get("ID"):
        return None
    version = os_fields.get("VERSION_ID")
    return Component(type=ComponentType.OPERATING_SYSTEM, name=os_fields["ID"], version=version,
                     description=os_fields.get("PRETTY_NAME") or None,
                     bom_ref=f"os:{os_fields['ID']}@{version or 'unknown'}")


def image_component(image: ImageInfo) -> Component:
    properties = [Property(name=IMAGE_ID_PROPERTY, value=image.image_id),
                  Property(name=IMAGE_REF_PROPERTY, value=image.ref)]
    properties += [Property(name=k, value=v) for k, v in sorted(image.labels.items()) if k.startswith(layout.LABEL_PREFIX + ".") and v]
    return Component(type=ComponentType.CONTAINER, name=image.repository, version=image.cell,
                     bom_ref=image.image_id, properties=properties)


def tool_component() -> Component:
    try:
        version = importlib_metadata.version("gpumatrix")
    except importlib_metadata.PackageNotFoundError:
        version = None
    return Component(type=ComponentType.APPLICATION, name="gpumatrix", version=version)


def build_bom(env: Environment, image: ImageInfo) -> Bom:
    os_fields = os_release_fields(env.os_release)
    root = image_component(image)
    bom = Bom(metadata=BomMetaData(component=root))
    bom.metadata.tools.components.add(tool_component())
    pythons = python_components(env.inspect)
    debs = deb_components(env.dpkg, os_fields)
    system = os_component(os_fields)
    for component, _ in pythons.values():
        bom.components.add(component)
    bom.components.update(debs)
    top = [c for c, entry in pythons.values() if entry.get("requested")] or [c for c, _ in pythons.values()]
    if system is not None:
        bom.components.add(system)
        bom.register_dependency(system, debs)
        top.append(system)
    else:
        top += debs
    bom.register_dependency(root, top)
    environment = env.inspect.get("environment") or {}
    for component, entry in pythons.values():
        needs = requirement_names(entry, environment)
        bom.register_dependency(component, [pythons[n][0] for n in sorted(needs) if n in pythons])
    return bom


def to_json(bom: Bom) -> str:
    """The Bom as CycloneDX JSON, validated against the schema (ValueError naming the first problem otherwise)."""
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    problem = validation_error(text)
    if problem:
        raise ValueError(f"the SBOM does not validate against the {FORMAT} schema: {problem}")
    return text + "\n"


def validation_error(text: str) -> str | None:
    error = JsonStrictValidator(SCHEMA).validate_str(text)
    return str(error.data.message if hasattr(error.data, "message") else error)[:300] if error else None


# --- the image -> its environment ----------------------------------------------------------------------------------


def parse_probe(raw: bytes) -> Environment:
    """The probe's JSON -> Environment; WorkFailed when pip inspect failed or answered no JSON."""
    try:
        probe = json.loads(raw)
        pip = probe["pip"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkFailed(f"the probe printed no JSON ({exc}): {raw[-300:]!r}") from None
    if pip["code"] != 0:
        raise WorkFailed(f"`pip inspect` exited with {pip['code']} (it needs pip >= 22.2): {pip['stderr'].strip()[-300:]}")
    try:
        inspect = json.loads(pip["stdout"])
    except ValueError as exc:
        raise WorkFailed(f"`pip inspect` printed no JSON: {exc}") from None
    dpkg = probe.get("dpkg") or {}
    if dpkg and dpkg.get("code") != 0:
        raise WorkFailed(f"`dpkg-query -W` exited with {dpkg.get('code')}: {dpkg.get('stderr', '').strip()[-300:]}")
    return Environment(inspect, dpkg.get("stdout") or "", probe.get("os_release") or "")


def read_environment(client, image, cell: Cell) -> Environment:
    """Run the probe in a container of `image` (no network), removed on the way out, also on Ctrl-C or SIGTERM."""

    with engine.container(client, image.id, cell, "sbom") as container:
        try:
            code, (out, err) = container.exec_run([layout.VENV_PYTHON, "-c", PROBE], demux=True)
        except (APIError, DockerException) as exc:
            raise WorkFailed(f"{cell.name}: running {layout.VENV_PYTHON} in the image failed: {exc}") from None
    if code != 0:
        tail = (err or out or b"").decode(errors="replace").strip()[-300:]
        raise WorkFailed(f"{cell.name}: {layout.VENV_PYTHON} in the image exited with {code}: {tail}")
    try:
        return parse_probe(out or b"")
    except WorkFailed as exc:
        raise WorkFailed(f"{cell.name}: {exc}") from None


def image_info(image, ref: str, cell: Cell) -> ImageInfo:
    return ImageInfo(ref=ref, image_id=image.id, repository=cell.repository, cell=cell.name,
                     labels=dict(image.labels or {}))


def make_sbom(client, image, ref: str, cell: Cell, path: Path) -> SbomResult:
    """Read the image's environment, build, validate and write its SBOM."""
    bom = build_bom(read_environment(client, image, cell), image_info(image, ref, cell))
    try:
        text = to_json(bom)
    except ValueError as exc:
        raise WorkFailed(f"{cell.name}: {exc}") from None
    write_atomic(path, text)
    return SbomResult(cell.name, path, image.id, components=len(bom.components))


# --- the steps: `build.py sbom` and the push hook ------------------------------------------------------------------


def sbom_path(out: Path, cell_name: str) -> Path:
    return out / f"{cell_name}{SUFFIX}"


def find_images(client, cells: list[Cell], image_ref: str | None) -> dict[str, tuple[str, object]]:
    """cell name -> (reference, image); UsageError naming every missing image (nothing is made then)."""
    found, missing = {}, []
    for cell in cells:
        ref = image_ref or cell.tags[0]
        try:
            found[cell.name] = (ref, client.images.get(ref))
        except ImageNotFound:
            missing.append(f"{cell.name}: no image {ref} on the engine; build it first "
                           f"(make image {cell_filters(cell)[1]})")
    if missing:
        raise UsageError("\n".join(missing))
    return found


def run_cells(client, cells: list[Cell], image_ref: str | None, out: Path, log: Log) -> list[SbomResult]:
    """One SBOM per cell; a cell that fails is reported in its result and the others still go."""
    images = find_images(client, cells, image_ref)
    results = []
    for cell in cells:
        ref, image = images[cell.name]
        log(f"{cell.name}: reading the installed environment of {ref} ({image.id[7:19]})")
        try:
            results.append(make_sbom(client, image, ref, cell, sbom_path(out, cell.name)))
        except WorkFailed as exc:
            results.append(SbomResult(cell.name, sbom_path(out, cell.name), image.id, error=str(exc)))
    return results


def recorded_image_id(path: Path) -> str | None:
    """The image id a valid SBOM file records; None for a missing, unreadable or invalid file."""
    try:
        text = path.read_text()
        component = json.loads(text)["metadata"]["component"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if validation_error(text):
        return None
    ids = [p.get("value") for p in component.get("properties") or [] if p.get("name") == IMAGE_ID_PROPERTY]
    return ids[0] if len(ids) == 1 else None


def catalog_record(project: Project, path: Path) -> dict:
    raw = path.read_bytes()
    doc = json.loads(raw)
    return {
        "path": project.relative(path),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "format": f"CycloneDX {doc.get('specVersion')} JSON",
        "components": len(doc.get("components") or []),
    }


def for_push(project: Project, client, requests: list, log: Log) -> list:
    """Each push request with the SBOM of exactly the image it pushes: out/sbom/<cell>.cdx.json is reused when it
    records that image id and made again otherwise. WorkFailed (nothing pushed) when one cannot be made."""
    attached = []
    for req in requests:
        path = sbom_path(project.out / "sbom", req.cell.name)
        if recorded_image_id(path) == req.image_id:
            log(f"{req.cell.name}: SBOM {project.relative(path)} is of this image ({req.image_id[7:19]}); reusing it")
        else:
            log(f"{req.cell.name}: making the SBOM of {req.image_id[7:19]}")
            make_sbom(client, client.images.get(req.image_id), req.cell.tags[0], req.cell, path)
        attached.append(dataclasses.replace(req, sbom=catalog_record(project, path)))
    return attached
