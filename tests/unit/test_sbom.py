"""The SBOM conversion: a real `pip inspect` document and dpkg-query lines -> a CycloneDX Bom, without an engine.

The fixtures in data/sbom/ were captured from the CPU cell's torch stage (Debian bookworm stand-in, torch
2.13.0+cpu from the loopback index): `/opt/venv/bin/python -m pip inspect` with each `description` dropped,
fourteen lines of `dpkg-query -W -f DPKG_FORMAT`, and /etc/os-release.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gpumatrix import catalog, sbom
from gpumatrix.project import Project

DATA = Path(__file__).resolve().parent / "data" / "sbom"
IMAGE_ID = "sha256:" + "ab" * 32
LABELS = {
    "io.gpumatrix.cell": "cpu-py3.11-torch2.13.0",
    "io.gpumatrix.torch": "2.13.0+cpu",
    "io.gpumatrix.variant": "cpu",
    "io.gpumatrix.cuda": "cpu",
    "io.gpumatrix.lock-sha256": "0123" * 16,
    "org.opencontainers.image.title": "gpu-images",
}


def environment(dpkg: str | None = None) -> sbom.Environment:
    return sbom.Environment(
        inspect=json.loads((DATA / "pip-inspect.json").read_text()),
        dpkg=(DATA / "dpkg.txt").read_text() if dpkg is None else dpkg,
        os_release=(DATA / "os-release").read_text(),
    )


def image(image_id: str = IMAGE_ID) -> sbom.ImageInfo:
    return sbom.ImageInfo(ref="ghcr.io/acme/gpu-images:cpu-py3.11-torch2.13.0", image_id=image_id,
                          repository="ghcr.io/acme/gpu-images", cell="cpu-py3.11-torch2.13.0", labels=LABELS)


def document(env: sbom.Environment | None = None) -> dict:
    return json.loads(sbom.to_json(sbom.build_bom(env or environment(), image())))


def purls(doc: dict) -> set[str]:
    return {c["purl"] for c in doc["components"] if "purl" in c}


def test_every_installed_distribution_is_a_pypi_component_with_its_local_version():
    doc = document()
    pypi = {p for p in purls(doc) if p.startswith("pkg:pypi/")}
    installed = json.loads((DATA / "pip-inspect.json").read_text())["installed"]
    assert len(pypi) == len(installed) == 11
    assert "pkg:pypi/torch@2.13.0%2Bcpu" in pypi  # '+' of the local version percent-encoded
    assert {"pkg:pypi/jinja2@3.1.6", "pkg:pypi/typing-extensions@4.16.0", "pkg:pypi/markupsafe@3.0.4"} <= pypi
    torch = next(c for c in doc["components"] if c["name"] == "torch")
    assert torch["version"] == "2.13.0+cpu"
    assert torch["licenses"][0]["expression"].startswith("Apache-2.0 AND")


def test_installed_debs_are_components_with_arch_distro_and_their_source():
    doc = document()
    deb = {p for p in purls(doc) if p.startswith("pkg:deb/")}
    assert len(deb) == 14
    assert "pkg:deb/debian/adduser@3.134?arch=all&distro=debian-12" in deb
    # an epoch, a binary package built from another source, and '+' in both versions
    assert ("pkg:deb/debian/bsdutils@1:2.38.1-5%2Bdeb12u3?arch=amd64&distro=debian-12"
            "&upstream=util-linux%402.38.1-5%2Bdeb12u3") in deb
    system = [c for c in doc["components"] if c["type"] == "operating-system"]
    assert [(c["name"], c["version"]) for c in system] == [("debian", "12")]
    assert len(doc["components"]) == 11 + 14 + 1


def test_only_installed_debs_count():
    lines = (DATA / "dpkg.txt").read_text()
    removed = "rc \told-package\t1.0-1\tamd64\told-package\t1.0-1\n"
    doc = document(environment(dpkg=lines + removed + "not a dpkg line\n"))
    assert not any("old-package" in p for p in purls(doc))
    assert len(doc["components"]) == 26


def test_an_image_without_dpkg_has_python_components_only():
    doc = document(environment(dpkg=""))
    assert all(p.startswith("pkg:pypi/") for p in purls(doc)) and len(purls(doc)) == 11


def test_the_image_is_the_metadata_component_with_its_id_and_labels():
    component = document()["metadata"]["component"]
    assert component["type"] == "container" and component["name"] == "ghcr.io/acme/gpu-images"
    assert component["version"] == "cpu-py3.11-torch2.13.0" and component["bom-ref"] == IMAGE_ID
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert props[sbom.IMAGE_ID_PROPERTY] == IMAGE_ID
    assert props["io.gpumatrix.torch"] == "2.13.0+cpu" and props["io.gpumatrix.lock-sha256"] == "0123" * 16
    assert "org.opencontainers.image.title" not in props


def test_dependencies_follow_requires_dist_in_this_environment():
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in document()["dependencies"]}
    assert "pkg:pypi/sympy@1.14.0" in deps["pkg:pypi/torch@2.13.0%2Bcpu"]
    assert deps["pkg:pypi/sympy@1.14.0"] == {"pkg:pypi/mpmath@1.3.0"}
    assert "pkg:pypi/torch@2.13.0%2Bcpu" in deps[IMAGE_ID]  # requested: installed by name
    assert "pkg:pypi/mpmath@1.3.0" not in deps[IMAGE_ID]  # only pulled in by sympy
    assert len(deps["os:debian@12"]) == 14


def test_the_document_validates_against_the_cyclonedx_schema_and_a_broken_one_does_not():
    text = sbom.to_json(sbom.build_bom(environment(), image()))
    doc = json.loads(text)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.6"
    assert sbom.validation_error(text) is None
    broken = text.replace('"type": "library"', '"type": "libary"', 1)
    assert "libary" in sbom.validation_error(broken)


def test_output_is_deterministic_apart_from_serial_and_timestamp():
    def stable(text: str) -> dict:
        doc = json.loads(text)
        doc.pop("serialNumber")
        doc["metadata"].pop("timestamp")
        return doc

    env = environment()
    shuffled = {**env.inspect, "installed": list(reversed(env.inspect["installed"]))}
    reordered = sbom.Environment(shuffled, "".join(reversed(env.dpkg.splitlines(True))), env.os_release)
    first = sbom.to_json(sbom.build_bom(env, image()))
    second = sbom.to_json(sbom.build_bom(reordered, image()))
    assert stable(first) == stable(second)
    assert json.dumps(stable(first)) == json.dumps(stable(second))  # the same order, not only the same content


def test_probe_failures_are_work_failures():
    with pytest.raises(sbom.WorkFailed, match="no JSON"):
        sbom.parse_probe(b"Traceback ...")
    failed_pip = {"pip": {"code": 1, "stdout": "", "stderr": "ERROR: unknown command \"inspect\""}, "dpkg": None}
    with pytest.raises(sbom.WorkFailed, match="pip >= 22.2"):
        sbom.parse_probe(json.dumps(failed_pip).encode())
    ok = {"pip": {"code": 0, "stdout": (DATA / "pip-inspect.json").read_text(), "stderr": ""}, "dpkg": None,
          "os_release": ""}
    env = sbom.parse_probe(json.dumps(ok).encode())
    assert env.dpkg == "" and len(env.inspect["installed"]) == 11


def write_sbom(tmp_path: Path, image_id: str) -> Path:
    path = sbom.sbom_path(tmp_path / "out" / "sbom", "cpu-py3.11-torch2.13.0")
    path.parent.mkdir(parents=True)
    path.write_text(sbom.to_json(sbom.build_bom(environment(), image(image_id))))
    return path


def test_the_recorded_image_id_decides_reuse(tmp_path):
    path = write_sbom(tmp_path, IMAGE_ID)
    assert sbom.recorded_image_id(path) == IMAGE_ID
    path.write_text(path.read_text().replace('"type": "library"', '"type": "libary"', 1))
    assert sbom.recorded_image_id(path) is None  # invalid: never reused
    path.write_text("{")
    assert sbom.recorded_image_id(path) is None
    assert sbom.recorded_image_id(tmp_path / "missing.cdx.json") is None


def test_catalog_record_and_markdown(tmp_path):
    (tmp_path / "matrix.yaml").write_text("")
    project = Project(tmp_path / "matrix.yaml")
    path = write_sbom(tmp_path, IMAGE_ID)
    record = sbom.catalog_record(project, path)
    assert record == {"path": "out/sbom/cpu-py3.11-torch2.13.0.cdx.json",
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "format": "CycloneDX 1.6 JSON", "components": 26}
    entry = {"cell": "c", "tags": ["c"], "reference": "r@sha256:1", "cuda": "cpu", "size": None, "sbom": record}
    md = catalog.catalog_markdown([entry, {**entry, "cell": "d", "sbom": None}])
    assert f"`out/sbom/cpu-py3.11-torch2.13.0.cdx.json` (26 components, sha256 `{record['sha256'][:12]}`)" in md
    assert md.splitlines()[-1].endswith("| - |")


@pytest.mark.parametrize("args, message", [
    (["sbom", "--all", "--image", "some/image:tag"], "--image names one image, but"),
    (["sbom", "--cuda", "12"], "is not a CUDA version"),
    (["sbom", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_sbom_arguments_are_one_line_and_exit_2(args, message, project, run_build):
    result = run_build("--matrix", str(project / "matrix.yaml"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in result.stderr and not (project / "out").exists()
