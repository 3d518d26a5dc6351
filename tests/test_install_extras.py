"""The install extras resolve to one consistent set of pins, checked from package metadata alone (no
download, no CUDA wheels): the project's ``gpu`` extra is verl 0.9.1's own ``vllm`` extra, whose exact pins
(torch, vllm, transformers, ...) must satisfy every other requirement verl and this project place on the
same packages. The README's GPU install line is that extra."""

from __future__ import annotations

from pathlib import Path

import pytest

packaging_req = pytest.importorskip("packaging.requirements")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
VERL_VERSION = "0.9.1"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def verl_requirements() -> list[Requirement]:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("verl")
    except PackageNotFoundError:
        pytest.skip("verl is not installed (pip install -e '.[verl]')")
    if dist.version != VERL_VERSION:
        pytest.skip(f"verl {dist.version} installed, the pins are checked against {VERL_VERSION}")
    return [Requirement(r) for r in dist.requires or []]


def closure(verl_reqs: list[Requirement], extras: set[str]) -> list[Requirement]:
    """Requirements of ``verl[extras]``, following verl's self-references (vllm -> verl[verl-core])."""
    out, seen, todo = [], set(), set(extras) | {""}
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for r in verl_reqs:
            env = {"extra": extra}
            if r.marker is not None and not r.marker.evaluate(env):
                continue
            if r.marker is None and extra:
                continue  # base requirements are collected once, under ""
            if canonicalize_name(r.name) == "verl":
                todo |= set(r.extras) - seen
                continue
            out.append(r)
    return out


def conflicts(reqs: list[Requirement]) -> list[str]:
    """Every ``==`` pin that another requirement on the same package excludes."""
    pins = {}
    for r in reqs:
        for spec in r.specifier:
            if spec.operator == "==":
                pins.setdefault(canonicalize_name(r.name), set()).add(spec.version)
    found = []
    for name, versions in pins.items():
        if len(versions) > 1:
            found.append(f"{name}: pinned to {sorted(versions)}")
            continue
        (v,) = versions
        for r in reqs:
            if canonicalize_name(r.name) == name and not r.specifier.contains(v, prereleases=True):
                found.append(f"{name}=={v} excluded by {r}")
    return found


def extra_requirements(name: str, verl_reqs: list[Requirement]) -> list[Requirement]:
    reqs = []
    for text in project()["optional-dependencies"][name]:
        r = Requirement(text)
        if canonicalize_name(r.name) == "verl":
            assert str(r.specifier) == f"=={VERL_VERSION}", f"extra {name}: verl must be pinned to {VERL_VERSION}"
            reqs += closure(verl_reqs, set(r.extras))
        else:
            reqs.append(r)
    return reqs


def test_gpu_extra_is_verls_own_vllm_extra_and_its_pins_are_consistent():
    verl_reqs = verl_requirements()
    gpu = project()["optional-dependencies"]["gpu"]
    # verl's own extra, plus only the virtualenv cap that keeps pip from backtracking (see pyproject.toml)
    assert gpu[0] == f"verl[vllm]=={VERL_VERSION}" and [Requirement(r).name for r in gpu[1:]] == ["virtualenv"]
    base = [Requirement(r) for r in project()["dependencies"]]
    reqs = base + extra_requirements("gpu", verl_reqs)
    pins = {canonicalize_name(r.name): str(r.specifier) for r in reqs if str(r.specifier).startswith("==")}
    # the combination verl 0.9.1 was released against
    assert pins["vllm"] == "==0.24.0" and pins["torch"] == "==2.11.0" and pins["transformers"] == "==5.9.0"
    assert conflicts(reqs) == []
    # the project itself leaves the GPU stack to verl
    assert not {canonicalize_name(r.name) for r in base} & {"torch", "vllm", "transformers"}


def test_cpu_extras_keep_cpu_torch_and_conflict_with_gpu_as_documented():
    verl_reqs = verl_requirements()
    base = [Requirement(r) for r in project()["dependencies"]]
    cpu = base + extra_requirements("trainer", verl_reqs) + extra_requirements("verl", verl_reqs)
    assert conflicts(cpu) == []
    assert not any(canonicalize_name(r.name) == "vllm" for r in cpu)
    both = cpu + extra_requirements("gpu", verl_reqs)
    assert any(c.startswith("torch: pinned to ['2.11.0', '2.13.0']") for c in conflicts(both))


def test_readme_gives_the_gpu_install_line():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[gpu]"' in readme
