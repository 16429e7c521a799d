"""Filters and the default cell (`make image CUDA=12.8`)."""

from __future__ import annotations

import pytest

from gpumatrix.errors import UsageError
from gpumatrix.select import Filters, choose_one, select


@pytest.fixture(scope="module")
def shipped(expand_file, repo):
    return expand_file(repo / "matrix.yaml")


def test_choose_one_for_cuda_12_8_is_default_python_and_newest_torch(shipped):
    cell, why = choose_one(shipped, Filters(cuda="12.8"))
    assert (cell.cuda, cell.python, cell.torch) == ("12.8", "3.11", "2.11.0")
    assert cell.torch_pin == "2.11.0+cu128"
    assert why == "Python 3.11 is the matrix default; torch 2.11.0 is the newest torch for these filters"


def test_choose_one_for_cuda_12_4(shipped):
    cell, _ = choose_one(shipped, Filters(cuda="12.4"))
    assert cell.name == "cu12.4-py3.11-torch2.6.0"


def test_choose_one_for_cuda_13_0(shipped):
    cell, _ = choose_one(shipped, Filters(cuda="13.0"))
    assert cell.name == "cu13.0-py3.11-torch2.14.1"


def test_choose_one_narrowed_by_python_and_torch(shipped):
    cell, _ = choose_one(shipped, Filters(cuda="12.8", python="3.12", torch="2.7.1"))
    assert cell.name == "cu12.8-py3.12-torch2.7.1"
    cell, _ = choose_one(shipped, Filters(cuda="12.8", torch="2.7.1"))
    assert cell.name == "cu12.8-py3.11-torch2.7.1"


def test_choose_one_cpu(shipped):
    cell, _ = choose_one(shipped, Filters(cuda="cpu"))
    assert cell.name == "cpu-py3.11-torch2.13.0"


def test_defaults_torch_per_cuda_overrides_newest(project, matrix_text, expand_text):
    text = matrix_text(
        cuda=("12.8", "13.0"), python=("3.11", "3.12"), torch=("2.7.1", "2.9.1", "2.11.0"),
        default_torch={"12.8": "2.7.1"},
    )
    exp = expand_text(project, text)
    cell, why = choose_one(exp, Filters(cuda="12.8"))
    assert cell.name == "cu12.8-py3.11-torch2.7.1"
    assert "2.7.1" in why
    # a CUDA without a pinned default still gets its newest torch
    cell, _ = choose_one(exp, Filters(cuda="13.0"))
    assert cell.name == "cu13.0-py3.11-torch2.11.0"


def test_default_python_falls_back_to_newest_when_default_has_no_cell(project, matrix_text, expand_text):
    text = matrix_text(python=("3.10", "3.12"), default_python="3.11",
                       extra="include:\n  - {cuda: cpu, python: '3.11', torch: '2.13.0'}\n")
    cell, why = choose_one(expand_text(project, text), Filters(cuda="12.8"))
    assert cell.python == "3.12"
    assert "3.11" in why


def test_more_than_one_match_without_narrowing_is_an_error(project, matrix_text, expand_text):
    # torch 2.9.1 has cells on both CUDA 12.8 and 13.0; without --cuda there is no single answer.
    text = matrix_text(cuda=("12.8", "13.0"), torch=("2.9.1",))
    exp = expand_text(project, text)
    with pytest.raises(UsageError) as info:
        choose_one(exp, Filters())
    message = str(info.value)
    assert "cu12.8-py3.11-torch2.9.1" in message and "cu13.0-py3.11-torch2.9.1" in message
    assert "--cuda" in message
    cell, _ = choose_one(exp, Filters(cuda="13.0"))
    assert cell.name == "cu13.0-py3.11-torch2.9.1"


def test_select_returns_all_matches(shipped):
    cells = select(shipped, Filters(cuda="12.8"))
    assert {c.name for c in cells} == {
        f"cu12.8-py{py}-torch{t}" for py in ("3.10", "3.11", "3.12") for t in ("2.7.1", "2.11.0")
    }
    assert {c.name for c in select(shipped, Filters(python="3.10", torch="2.9.1"))} == {"cu13.0-py3.10-torch2.9.1"}


def test_filter_for_incompatible_combo_explains(shipped):
    with pytest.raises(UsageError) as info:
        select(shipped, Filters(cuda="13.0", torch="2.5.1"))
    message = str(info.value)
    assert "--cuda 13.0 --torch 2.5.1" in message
    assert "for CUDA 13.0 use torch >= 2.9.0" in message
    assert "runs on CUDA 12.4" in message


def test_filter_for_python_outside_torch_range_explains(shipped):
    with pytest.raises(UsageError) as info:
        select(shipped, Filters(cuda="12.4", python="3.13", torch="2.5.1"))
    assert "3.13" in str(info.value) and "2.5.1" in str(info.value)


def test_filter_for_valid_combo_not_in_matrix_names_neighbours(shipped):
    # torch 2.6.0 works on 12.8 (cu126) but the matrix excludes it there.
    with pytest.raises(UsageError) as info:
        select(shipped, Filters(cuda="12.8", torch="2.6.0"))
    message = str(info.value)
    assert "not in the matrix" in message
    assert "cu12.8-py3.10-torch2.7.1" in message


def test_filter_for_unknown_cuda_explains(shipped):
    with pytest.raises(UsageError, match="12.9"):
        select(shipped, Filters(cuda="12.9"))
