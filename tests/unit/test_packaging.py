"""Packaging: the license is shipped and declared as an SPDX expression, the build backend is
bounded, torch is the learner's extra (serving installs without it), and the CPU-only torch route the
README and the Dockerfile document fits the pins."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_the_apache_license_is_shipped_and_declared_in_spdx():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a string (PEP 639), not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    # what setuptools made of it for the installed package (the editable install of this checkout)
    metadata = importlib.metadata.metadata("stream-learner")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (metadata.get_all("License-File") or [])


def test_the_build_backend_is_bounded():
    requirements = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = next(r for r in requirements if r.name == "setuptools")
    bounds = {spec.operator: Version(spec.version) for spec in setuptools.specifier}
    assert bounds[">="] >= Version("77")  # SPDX license expressions
    assert "<" in bounds and bounds["<"] > bounds[">="]


def test_torch_is_the_learners_extra_and_serving_installs_without_it():
    base = {Requirement(r).name for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "torch" not in base and not any(name.startswith(("nvidia", "triton")) for name in base)
    assert [Requirement(r).name for r in extras["train"]] == ["torch"]
    assert "serve" in extras and "torch" not in {Requirement(r).name for r in extras["serve"]}
    # what installs the learner for development and CI installs the extra
    make = (REPO / "Makefile").read_text()
    assert "-e '.[train,dev]'" in make and "-e '.[train,dev,bench]'" in make
    metadata = importlib.metadata.metadata("stream-learner")
    assert {"train", "serve"} <= set(metadata.get_all("Provides-Extra") or [])


def test_the_cpu_torch_build_satisfies_the_same_pins():
    version = pinned("torch")
    assert SpecifierSet(f"=={version}").contains(f"{version}+cpu")
    project_torch = Requirement(PYPROJECT["project"]["optional-dependencies"]["train"][0])
    assert project_torch.specifier.contains(f"{version}+cpu")


def test_readme_and_image_document_both_torch_builds():
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"--extra-index-url {CPU_INDEX}" in readme
    assert "pip install -c constraints.txt '.[train]'" in readme and "+cpu" in readme
    assert "pip install -c constraints.txt '.[serve]'" in readme
    assert "--build-arg TORCH=cpu" in readme
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH=cuda$", dockerfile, re.M)
    assert f"ARG TORCH_CPU_INDEX={CPU_INDEX}" in dockerfile
    assert "\"torch==$(sed -n 's/^torch==//p' constraints.txt)+cpu\"" in dockerfile
    assert "grep -qi '^nvidia-'" in dockerfile  # the CPU image is checked for CUDA packages
    assert "LICENSE" in dockerfile


def test_the_wheel_ships_the_schemas_and_py_typed(tmp_path):
    """Built from a copy of the sources (the checkout stays clean), as pip builds it for users."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO / "stream_learner", source / "stream_learner", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("stream_learner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "stream_learner/py.typed" in names  # type checkers use the package's annotations
    assert {"stream_learner/schemas/user_event.avsc", "stream_learner/schemas/model_snapshot.avsc"} <= names
