"""Rendering docker/<cell>/Dockerfile: reproducible, checkable, self-cleaning; what the text must and must not say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpumatrix.render import content_digest

REPO = Path(__file__).resolve().parents[2]

# Facts: the wheel variant of each (CUDA, torch) pair in the shipped matrix.
SHIPPED_VARIANTS = {
    ("12.4", "2.5.1"): "cu124",
    ("12.4", "2.6.0"): "cu124",
    ("12.8", "2.7.1"): "cu128",
    ("12.8", "2.11.0"): "cu128",
    ("13.0", "2.9.1"): "cu130",
    ("13.0", "2.14.1"): "cu130",
    ("cpu", "2.13.0"): "cpu",
}
NAME = re.compile(r"(?:cu(?P<cuda>\d+\.\d+)|cpu)-py(?P<python>\d+\.\d+)-torch(?P<torch>\d+\.\d+\.\d+)")


def shipped_dockerfiles() -> list[Path]:
    return sorted((REPO / "docker").glob("*/Dockerfile"))


def render(cli, project: Path, *extra: str) -> tuple[int, str]:
    rc, _, err = cli("--matrix", str(project / "matrix.yaml"), "render", *extra)
    return rc, err


def test_render_is_byte_identical_in_two_separate_projects(tmp_path, cli, make_project, snapshot):
    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "b")
    assert render(cli, a)[0] == 0
    assert render(cli, b)[0] == 0
    first, second = snapshot(a / "docker"), snapshot(b / "docker")
    assert first and first == second
    assert len(first) == 19
    # and identical to what is committed
    assert first == snapshot(REPO / "docker")


def test_render_twice_writes_nothing_the_second_time(project, cli, snapshot):
    assert render(cli, project)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in (project / "docker").rglob("Dockerfile")}
    rc, err = render(cli, project)
    assert rc == 0
    assert "0 written" in err
    assert before == {p: p.stat().st_mtime_ns for p in (project / "docker").rglob("Dockerfile")}


def test_render_leaves_no_temporary_files(project, cli):
    assert render(cli, project)[0] == 0
    files = [p for p in (project / "docker").rglob("*") if p.is_file()]
    assert files and all(p.name == "Dockerfile" for p in files)


def test_check_on_fresh_render_passes(project, cli):
    assert render(cli, project)[0] == 0
    assert render(cli, project, "--check")[0] == 0


def test_check_names_stale_missing_and_leftover_and_writes_nothing(project, cli, snapshot):
    assert render(cli, project)[0] == 0
    docker = project / "docker"
    stale = docker / "cu12.8-py3.11-torch2.7.1" / "Dockerfile"
    stale.write_text(stale.read_text() + "# hand edit\n")
    missing = docker / "cu12.4-py3.10-torch2.5.1"
    (missing / "Dockerfile").unlink()
    missing.rmdir()
    leftover = docker / "cu12.8-py3.11-torch2.6.0"
    leftover.mkdir()
    (leftover / "Dockerfile").write_text("FROM scratch\n")
    before = snapshot(docker)

    rc, err = render(cli, project, "--check")

    assert rc == 1
    assert "cu12.8-py3.11-torch2.7.1" in err and "stale" in err
    assert "cu12.4-py3.10-torch2.5.1" in err and "missing" in err
    assert "cu12.8-py3.11-torch2.6.0" in err
    assert "cu12.4-py3.11-torch2.5.1" not in err  # an up-to-date file is not named
    assert snapshot(docker) == before
    assert not missing.exists()


def test_check_without_docker_dir_names_missing_and_creates_nothing(project, cli):
    rc, err = render(cli, project, "--check")
    assert rc == 1
    assert "cpu-py3.11-torch2.13.0" in err and "missing" in err
    assert not (project / "docker").exists()


def test_render_removes_dirs_of_cells_that_no_longer_exist(project, cli):
    assert render(cli, project)[0] == 0
    gone = project / "docker" / "cu12.4-py3.10-torch2.5.1"
    assert gone.is_dir()
    matrix = project / "matrix.yaml"
    text = matrix.read_text().replace('cuda: ["12.4", "12.8", "13.0"]', 'cuda: ["12.8", "13.0"]')
    matrix.write_text(text.replace('torch: ["2.5.1", "2.6.0", ', 'torch: ['))  # they ran only on 12.4
    rc, err = render(cli, project)
    assert rc == 0, err
    assert not gone.exists()
    assert not any(p.name.startswith("cu12.4-") for p in (project / "docker").iterdir())
    assert (project / "docker" / "cu12.8-py3.11-torch2.7.1" / "Dockerfile").is_file()
    assert "removed" in err


def test_render_restores_a_hand_edited_file(project, cli):
    assert render(cli, project)[0] == 0
    path = project / "docker" / "cpu-py3.11-torch2.13.0" / "Dockerfile"
    original = path.read_bytes()
    path.write_text("FROM scratch\n")
    assert render(cli, project)[0] == 0
    assert path.read_bytes() == original


def test_shipped_docker_dir_is_up_to_date(run_build):
    result = run_build("render", "--check")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_docker_dir_has_one_dockerfile_per_cell():
    assert {p.parent.name for p in shipped_dockerfiles()} == {
        f"cu{cuda}-py{py}-torch{torch}"
        for (cuda, torch) in SHIPPED_VARIANTS
        if cuda != "cpu"
        for py in ("3.10", "3.11", "3.12")
    } | {"cpu-py3.11-torch2.13.0"}


@pytest.mark.parametrize("dockerfile", shipped_dockerfiles(), ids=lambda p: p.parent.name)
def test_rendered_dockerfile_contents(dockerfile: Path):
    text = dockerfile.read_text()
    m = NAME.fullmatch(dockerfile.parent.name)
    assert m, dockerfile.parent.name
    cuda = m["cuda"] or "cpu"
    torch = m["torch"]
    variant = SHIPPED_VARIANTS[(cuda, torch)]

    assert "--extra-index-url" not in text
    # BuildKit's variant: the only mounts are the download caches, and nothing else needs BuildKit
    mounts = set(re.findall(r"--mount=(\S+)", text))
    assert mounts and mounts <= {"type=cache,id=gpumatrix-pip,target=/root/.cache/pip",
                                 "type=cache,id=gpumatrix-uv,target=/root/.cache/uv"}, mounts
    assert "<<" not in text  # no heredocs
    assert "pypi.org" not in text
    assert f"ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/{variant}\n" in text
    install = re.search(r"RUN (?:--mount=\S+ )*pip install [^\n]*--index-url \"\$\{TORCH_INDEX_URL\}\"(?:.*\\\n)*.*\n", text)
    assert install, "torch is not installed with --index-url"
    assert re.search(rf"^\s+torch=={re.escape(torch)}\+{variant}\b", install.group(0), re.M)
    # every pin in the torch install is an exact local version of this variant
    pins = re.findall(r"^\s+([a-z]+)==(\S+?)(?: \\)?$", install.group(0), re.M)
    assert pins and all(pin.endswith(f"+{variant}") for _, pin in pins)
    assert "PIP_CONSTRAINT=/opt/gpumatrix/constraints.txt" in text
    # every shipped cell has an app layer (app or cpu), installed from its hashed lock
    assert "COPY app.lock" in text and "--require-hashes" in text
    assert f'io.gpumatrix.torch="{torch}+{variant}"' in text
    if cuda == "cpu":
        assert "NVIDIA_REQUIRE_CUDA" not in text
        assert "FROM ${BASE_IMAGE}" in text and f"ARG BASE_IMAGE=python:{m['python']}-bookworm" in text
    else:
        assert f"NVIDIA_REQUIRE_CUDA:-cuda>={cuda}}}" in text
        assert re.search(rf"ARG BASE_IMAGE=nvidia/cuda:{re.escape(cuda)}\.\d+-cudnn-devel-ubuntu\d\d\.04\n", text)


def test_template_branches_render_lintable_text(project, cli, write_matrix, matrix_text):
    """os_packages, --pre, no layers and a companion subset all render, and --pre lands on the torch install."""
    write_matrix(
        project,
        matrix_text(
            cuda=("12.4", "12.8", "cpu"), python=("3.10", "3.12"), torch=("2.6.0",), default_python="3.12",
            extra="""\
            settings:
              os_packages: [git, curl]
              pre: true
            overrides:
              - match: {cuda: "12.8"}
                layers: [app]
                companions: [torchvision]
            """,
        ),
    )
    assert render(cli, project)[0] == 0
    text = (project / "docker" / "cu12.8-py3.12-torch2.6.0" / "Dockerfile").read_text()
    assert "torchvision==0.21.0+cu126" in text and "torchaudio" not in text
    assert "--pre" in text
    assert "git curl" in text
    assert "COPY app.lock" in text
    no_layers = (project / "docker" / "cu12.4-py3.10-torch2.6.0" / "Dockerfile").read_text()
    assert "COPY app.lock" not in no_layers and "--require-hashes" not in no_layers



def test_installer_setting_picks_uv_or_pip_for_the_app_layer(project, cli, write_matrix, matrix_text):
    """uv by default, pinned, fetched into /tmp and removed in the same step; `installer: pip` per cell brings back pip.
    The app layer is installed in the runtime stage; the torch stage is pip's."""
    write_matrix(
        project,
        matrix_text(
            cuda=("12.8", "cpu"), python=("3.11",), torch=("2.7.1",),
            extra="""\
            settings:
              layers: [app]
              uv: "0.13.1"
            overrides:
              - match: {cuda: cpu}
                installer: pip
            """,
        ),
    )
    assert render(cli, project)[0] == 0
    uv = (project / "docker" / "cu12.8-py3.11-torch2.7.1" / "Dockerfile").read_text()
    pip = (project / "docker" / "cpu-py3.11-torch2.7.1" / "Dockerfile").read_text()
    for text in (uv, pip):
        assert "AS app" not in text and "COPY --from=app" not in text
        assert "uv pip" not in text[:text.index("AS runtime")]
    install = next(step for step in steps(uv) if "uv pip install" in step)
    assert install.startswith("RUN --mount=type=cache,id=gpumatrix-pip,target=/root/.cache/pip --mount=type=cache,id=gpumatrix-uv,target=/root/.cache/uv pip install --cache-dir /root/.cache/pip --target /tmp/uv uv==0.13.1 ")
    assert "--cache-dir /root/.cache/uv --link-mode copy" in install
    assert "--compile-bytecode" in install and "--require-hashes --no-deps" in install
    assert "--constraints /opt/gpumatrix/torch-constraints.txt" in install
    # a failed install on the runtime base (no compilers) ends with the way out
    assert re.search(r"\|\| \{ echo \"[^\"]*set app_stage: devel for this cell\"; exit 1; \}; \}", install)
    assert install.rstrip().endswith("&& rm -r /tmp/uv /tmp/before /tmp/after /tmp/added /tmp/touched /tmp/changed /tmp/marker")
    assert "uv" not in pip.replace("VIRTUAL_ENV", "")
    assert any(step.startswith("RUN --mount=type=cache,id=gpumatrix-pip,target=/root/.cache/pip python -B -c") and "pip install --cache-dir /root/.cache/pip --require-hashes" in step
               for step in steps(pip))


def test_app_stage_devel_installs_on_the_devel_base_and_copies_the_files(project, cli, write_matrix, matrix_text):
    """`app_stage: devel`: the lock is installed in an `app` stage on the devel base (compilers), uv kept out of the
    venv, and only the files the install added copied into the runtime stage."""
    write_matrix(
        project,
        matrix_text(
            cuda=("12.8",), python=("3.11",), torch=("2.7.1",),
            extra="""\
            settings:
              layers: [app]
              app_stage: devel
            """,
        ),
    )
    assert render(cli, project)[0] == 0
    text = (project / "docker" / "cu12.8-py3.11-torch2.7.1" / "Dockerfile").read_text()
    app, runtime = text[text.index("AS app"):text.index("AS runtime")], text[text.index("AS runtime"):]
    assert "RUN --mount=type=cache,id=gpumatrix-pip,target=/root/.cache/pip pip install --cache-dir /root/.cache/pip --target /opt/uv uv==" in app and "/opt/uv/bin/uv pip install" in app
    assert "mv \"$path\" \"/opt/app-layer${path}\"" in app
    assert "COPY --from=app /opt/app-layer/ /" in runtime
    assert "uv" not in runtime.replace("VIRTUAL_ENV", "") and "app.lock" not in runtime
    assert "set app_stage: devel" not in text


CACHE_MOUNT = re.compile(r"--mount=type=cache,id=gpumatrix-(pip|uv),target=/root/\.cache/(pip|uv) ")


def as_classic(buildkit_text: str) -> str:
    """BuildKit's variant with its cache mounts taken out, as the classic builder's variant must read: written here
    from the two variants' contract, not from the template."""
    text = CACHE_MOUNT.sub("", buildkit_text)
    text = text.replace("--cache-dir /root/.cache/pip", "--no-cache-dir")
    return text.replace("--cache-dir /root/.cache/uv --link-mode copy", "--no-cache")


@pytest.mark.parametrize("installer,app_stage", [("uv", "runtime"), ("pip", "runtime"), ("uv", "devel"),
                                                 ("pip", "devel")])
def test_the_classic_variant_is_buildkits_without_the_cache_mounts(installer, app_stage, project, cli, write_matrix,
                                                                      matrix_text):
    """The drift check covers both variants that get built: the committed files are BuildKit's, and the classic
    builder's differs from them in the cache mounts alone, so it cannot drift on its own."""
    write_matrix(project, matrix_text(cuda=("12.8", "cpu"), python=("3.11",), torch=("2.7.1",), extra=f"""\
        settings:
          layers: [app]
          installer: {installer}
          app_stage: {app_stage}
        overrides:
          - match: {{cuda: cpu}}
            builder: classic
        """))
    assert render(cli, project)[0] == 0
    buildkit = (project / "docker" / "cu12.8-py3.11-torch2.7.1" / "Dockerfile").read_text()
    classic = (project / "docker" / "cpu-py3.11-torch2.7.1" / "Dockerfile").read_text()
    assert "--mount=type=cache" in buildkit and "--cache-dir /root/.cache/pip" in buildkit
    assert "--mount" not in classic and "--cache-dir" not in classic
    write_matrix(project, matrix_text(cuda=("12.8", "cpu"), python=("3.11",), torch=("2.7.1",), extra=f"""\
        settings:
          layers: [app]
          installer: {installer}
          app_stage: {app_stage}
        """))
    assert render(cli, project)[0] == 0
    cpu_buildkit = (project / "docker" / "cpu-py3.11-torch2.7.1" / "Dockerfile").read_text()
    assert as_classic(cpu_buildkit) == classic


def test_a_builder_that_is_no_builder_is_refused(project, cli, write_matrix, matrix_text):
    write_matrix(project, matrix_text(cuda=("cpu",), python=("3.11",), torch=("2.7.1",), extra="""\
        settings:
          builder: kaniko
        """))
    rc, err = render(cli, project)
    assert rc == 2 and "settings.builder" in err and "'buildkit' or 'classic'" in err and "Traceback" not in err
    assert not (project / "docker").exists() or not list((project / "docker").glob("*/Dockerfile"))


def steps(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    return [line for line in dockerfile.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]


# ---- content digest --------------------------------------------------------------------------------------------

DOCKERFILE = "FROM scratch\nLABEL a=b\n"
LOCK = b"numpy==2.1.0 --hash=sha256:00\n"
ARGS = {"BASE_IMAGE": "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04", "LOCK_SHA256": "abc"}


def test_digest_is_stable_for_identical_inputs():
    d = content_digest(DOCKERFILE, LOCK, ARGS)
    assert re.fullmatch(r"[0-9a-f]{64}", d)
    assert d == content_digest(str(DOCKERFILE), bytes(LOCK), dict(ARGS))
    assert d == content_digest(DOCKERFILE, LOCK, dict(reversed(list(ARGS.items()))))  # argument order is irrelevant


@pytest.mark.parametrize(
    "changed",
    [
        (DOCKERFILE + "\n", LOCK, ARGS),
        (DOCKERFILE.replace("a=b", "a=c"), LOCK, ARGS),
        (DOCKERFILE, LOCK + b"tqdm==4.66.0\n", ARGS),
        (DOCKERFILE, LOCK.replace(b"00", b"01"), ARGS),
        (DOCKERFILE, None, ARGS),
        (DOCKERFILE, LOCK, {**ARGS, "LOCK_SHA256": "abd"}),
        (DOCKERFILE, LOCK, {**ARGS, "TORCH_INDEX_URL": "http://127.0.0.1:1/cu128"}),
        (DOCKERFILE, LOCK, {}),
    ],
    ids=["dockerfile-newline", "dockerfile-label", "lock-added", "lock-hash", "no-lock", "arg-value", "arg-added",
         "no-args"],
)
def test_digest_changes_with_any_input(changed):
    assert content_digest(*changed) != content_digest(DOCKERFILE, LOCK, ARGS)


def test_digest_does_not_confuse_parts():
    # moving bytes from the Dockerfile into the lock must not give the same digest
    assert content_digest("AB", b"C", {}) != content_digest("A", b"BC", {})


def test_list_json_tags_include_content_tag(cli, repo):
    import json

    rc, out, _ = cli("--matrix", str(repo / "matrix.yaml"), "list", "--cuda", "12.8", "--torch", "2.7.1",
                     "--python", "3.11", "--format", "json")
    assert rc == 0
    [record] = json.loads(out)
    assert record["name"] == "cu12.8-py3.11-torch2.7.1"
    assert record["torch"] == "2.7.1+cu128"
    assert record["companions"] == {"torchvision": "0.22.1+cu128", "torchaudio": "2.7.1+cu128"}
    plain, content = record["tags"]
    assert plain == "ghcr.io/acme/gpu-images:cu12.8-py3.11-torch2.7.1"
    assert re.fullmatch(r"ghcr\.io/acme/gpu-images:cu12\.8-py3\.11-torch2\.7\.1-[0-9a-f]{12}", content)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", content.rpartition(":")[2])


def test_torch_stage_pins_are_installed_with_torch_from_the_torch_index(project, cli, write_matrix, matrix_text):
    write_matrix(
        project,
        matrix_text(
            cuda=("12.8", "cpu"), python=("3.11",), torch=("2.7.1",),
            extra="""\
            overrides:
              - match: {cuda: cpu}
                torch_stage_pins: ["fsspec==2024.12.0"]
            """,
        ),
    )
    assert render(cli, project)[0] == 0
    cpu = (project / "docker" / "cpu-py3.11-torch2.7.1" / "Dockerfile").read_text()
    cuda = (project / "docker" / "cu12.8-py3.11-torch2.7.1" / "Dockerfile").read_text()
    install = next(step for step in steps(cpu) if "--index-url" in step)
    assert install.split()[-1] == "fsspec==2024.12.0"
    assert "torch==2.7.1+cpu" in install
    assert "fsspec" not in cuda


@pytest.mark.parametrize("pin, why", [
    ("fsspec>=2024.12.0", "is not valid here (an exact pin name==version such as fsspec==2024.12.0)"),
    ("fsspec==2024.12.0; rm -rf /", "is not valid here (an exact pin name==version such as fsspec==2024.12.0)"),
    ("torch==2.7.1+cpu", "torch is pinned by the cell's `torch` and `companions`, not here"),
])
def test_a_torch_stage_pin_that_is_no_exact_pin_of_another_package_is_refused(pin, why, project, cli, write_matrix,
                                                                             matrix_text):
    write_matrix(project, matrix_text(cuda=("cpu",), python=("3.11",), torch=("2.7.1",),
                                      extra=f"settings:\n  torch_stage_pins: [{pin!r}]\n"))
    rc, err = render(cli, project)
    assert rc == 2, err
    assert "Traceback" not in err
    assert "settings.torch_stage_pins" in err and why in err
