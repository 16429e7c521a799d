"""`changes --save` / `--since`: what a refresh moved, as one markdown table (the refresh pull request's body).
The before and after files are written here by hand; the expected rows are stated from them."""

from __future__ import annotations

from pathlib import Path

from gpumatrix import changes
from gpumatrix.cli import main
from gpumatrix.project import Project

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
ROW = ('  "{release}": {{variants: [{variants}], python: ["3.10", "3.14"], torchvision: "0.29.1", torchaudio: null, '
       'source: index, checked: "2026-11-01"}}\n')


def generated(path: Path, rows: dict[str, str]) -> Path:
    path.write_text("torch:\n" + "".join(ROW.format(release=r, variants=v) for r, v in rows.items())
                    + "nightly: {}\n")
    return path


def pins(path: Path, entries: dict[str, str]) -> None:
    body = "".join(f"  {ref}:\n    digest: {digest}\n    resolved: '2026-11-01T00:00:00Z'\n"
                   for ref, digest in entries.items())
    path.write_text("bases:\n" + body if body else "bases: {}\n")


def lock(path: Path, packages: dict[str, str]) -> None:
    path.write_text("# gpumatrix lock\n\n" + "".join(f"{name}=={version} \\\n    --hash=sha256:{'0' * 64}\n"
                                                     for name, version in packages.items()))


def test_the_table_names_each_row_digest_and_pin_that_moved(tmp_path):
    (tmp_path / "locks").mkdir()
    (tmp_path / "matrix.yaml").write_text("")
    project = Project(tmp_path / "matrix.yaml")
    rows = generated(tmp_path / "gen.yaml", {"2.14.1": "cu126, cu130"})
    pins(project.bases, {"nvidia/cuda:12.8.1-base-ubuntu24.04": A, "python:3.11-slim-bookworm": A})
    lock(project.locks / "cpu-py3.11-torch2.13.0.txt", {"numpy": "2.4.6", "rich": "14.0.0", "six": "1.16.0"})
    changes.save(project, tmp_path / "before", rows)

    generated(rows, {"2.14.1": "cu126, cu130, cu132", "2.15.0": "cu130"})
    pins(project.bases, {"nvidia/cuda:12.8.1-base-ubuntu24.04": B, "python:3.11-slim-bookworm": A})
    lock(project.locks / "cpu-py3.11-torch2.13.0.txt", {"numpy": "2.4.7", "rich": "14.0.0", "tqdm": "4.67.1"})
    lock(project.locks / "cu12.8-py3.11-torch2.11.0.txt", {"numpy": "2.4.7"})

    table = changes.table(changes.since(project, tmp_path / "before", rows)).splitlines()
    assert table == [
        "| what | before | after |",
        "|---|---|---|",
        "| compat: torch 2.14.1 |  | new variant cu132 |",
        "| compat: torch 2.15.0 |  | new on the index (variants cu130, Python 3.10-3.14) |",
        "| base `nvidia/cuda:12.8.1-base-ubuntu24.04` | sha256:aaaaaaaaaaaa | sha256:bbbbbbbbbbbb |",
        "| lock `cpu-py3.11-torch2.13.0`: numpy | 2.4.6 | 2.4.7 |",
        "| lock `cpu-py3.11-torch2.13.0`: six | 1.16.0 | none |",
        "| lock `cpu-py3.11-torch2.13.0`: tqdm | none | 4.67.1 |",
        "| lock `cu12.8-py3.11-torch2.11.0` | none | 1 packages |",
    ]


def test_nothing_moved_says_so(tmp_path, capsys):
    (tmp_path / "matrix.yaml").write_text("")
    assert main(["--matrix", str(tmp_path / "matrix.yaml"), "changes", "--save", str(tmp_path / "before")]) == 0
    assert main(["--matrix", str(tmp_path / "matrix.yaml"), "changes", "--since", str(tmp_path / "before")]) == 0
    assert capsys.readouterr().out.startswith("Nothing moved")


def test_since_a_folder_that_holds_no_copy_is_exit_2(tmp_path, capsys):
    assert main(["changes", "--since", str(tmp_path)]) == 2
    assert f"changes: {tmp_path} holds no copy made by `changes --save`" in capsys.readouterr().err
