# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Each charm packs the shared package, and imports it from there.

charmcraft is not run here: these tests read each charm's ``runner-common`` part, lay out what
it stages (the package under ``lib/``) beside the charm's ``src/``, and import the charm from
that layout in a fresh interpreter that does not see the editable install the tests use.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import yaml

CHARMS = pathlib.Path(__file__).parents[2]
COMMON = CHARMS / "common"


@pytest.fixture(params=["webhook-gateway", "planner"])
def charm_dir(request) -> pathlib.Path:
    return CHARMS / request.param


def part(charm_dir: pathlib.Path) -> dict:
    return yaml.safe_load((charm_dir / "charmcraft.yaml").read_text())["parts"]["runner-common"]


def test_part_dumps_the_package_into_lib(charm_dir):
    spec = part(charm_dir)
    assert spec["plugin"] == "dump"
    assert (charm_dir / spec["source"]).resolve() == COMMON.resolve()
    assert spec["organize"] == {"runner_common": "lib/runner_common"}
    assert spec["stage"][0] == "lib/runner_common"


def test_charm_keeps_no_copy(charm_dir):
    assert not (charm_dir / "lib" / "runner_common").exists()


def test_requirements_pin_the_package_dependencies(charm_dir):
    pinned = {
        re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in (charm_dir / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    # The dependencies charms/common/pyproject.toml declares (test.sh installs the package).
    requires = importlib.metadata.requires("runner-common") or []
    wanted = {re.split(r"[=<>\[ ;]", dep, maxsplit=1)[0].lower() for dep in requires}
    assert wanted
    assert wanted <= pinned, wanted - pinned


def test_packed_layout_imports_the_charm(charm_dir, tmp_path):
    spec = part(charm_dir)
    source = charm_dir / spec["source"]
    for name, destination in spec["organize"].items():
        shutil.copytree(
            source / name, tmp_path / destination, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copytree(charm_dir / "src", tmp_path / "src")
    # `-S`: no site module, so no .pth file (the editable install) is read; the third-party
    # packages come from the virtualenv's site-packages, as from the charm's venv/.
    paths = [str(tmp_path / "lib"), str(tmp_path / "src"), sysconfig.get_paths()["purelib"]]
    code = (
        f"import sys; sys.path[:0] = {paths!r}; import charm, runner_common; "
        "print(runner_common.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "lib" / "runner_common" / "__init__.py")
