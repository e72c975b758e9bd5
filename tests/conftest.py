"""Shared fixtures. Only tests that ask for `testbed` (directly or through `namespace`,
`admin_api`, `kubectl`) start the local control plane; unit tests never do.

- `testbed` (session): a running `testbed.Testbed` (hack/testbed/testbed.py). Reuses the testbed
  that $KUBECONFIG points at when it is one of ours and answers (`eval "$(hack/testbed/up)"`
  before pytest: fast reruns); otherwise starts one and stops it at the end of the session,
  asserting that no process is left. While it runs, os.environ["KUBECONFIG"] is its admin
  kubeconfig, so kopf run in-process logs in to it.
- `admin_api` (session): a kubernetes ApiClient acting as the cluster admin.
- `namespace` (function): a fresh namespace whose `default` ServiceAccount exists; deleted after.
- `kubectl` (session): `kubectl(*args, input=None, check=True, kubeconfig=None)` against the testbed.
Helpers for ServiceAccount tokens and clients are in tests/kube.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hack" / "testbed"))

import testbed as testbed_lib  # noqa: E402  (standard library only at import time)


def _bin_dir() -> Path:
    """The control-plane binaries: $LLMPACK_TESTBED_BIN, else what hack/testbed/build prints."""
    if os.environ.get("LLMPACK_TESTBED_BIN"):
        return Path(os.environ["LLMPACK_TESTBED_BIN"])
    build = subprocess.run([str(ROOT / "hack" / "testbed" / "build")], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"hack/testbed/build failed:\n{build.stderr[-3000:]}", pytrace=False)
    return Path(build.stdout.strip().splitlines()[-1])


def _set_kubeconfig(path: str | None) -> None:
    """Point KUBECONFIG (and the kubernetes package's default, read at its import) at `path`."""
    if path is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = path
    kube_config = sys.modules.get("kubernetes.config.kube_config")
    if kube_config is not None:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path or "~/.kube/config"


@pytest.fixture(scope="session")
def testbed():
    current = os.environ.get("KUBECONFIG")
    reused = testbed_lib.Testbed.from_kubeconfig(current) if current else None
    if reused is not None:
        _set_kubeconfig(str(reused.kubeconfig))
        yield reused
        return
    try:
        tb = testbed_lib.up(_bin_dir(), die_with_parent=True)
    except testbed_lib.TestbedError as e:
        pytest.fail(f"the testbed did not start: {e}", pytrace=False)
    _set_kubeconfig(str(tb.kubeconfig))
    try:
        yield tb
    finally:
        _set_kubeconfig(current)
        tb.down()
        assert not tb.alive(), f"testbed processes left running: {tb.alive()}"
        assert not tb.dir.exists(), f"testbed folder left behind: {tb.dir}"


@pytest.fixture(scope="session")
def admin_api(testbed):
    import kube

    client = kube.api_client(testbed.kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubectl(testbed):
    return testbed.kubectl


@pytest.fixture
def namespace(request, admin_api) -> str:
    import kube

    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    # The stem is the same for every case of a parametrized test, so the suffix alone tells them
    # apart: 40 random bits (5 hex digits collided once in a run of test_crd_bounds' ~100 cases,
    # a name still terminating from the earlier case)
    name = kube.create_namespace(admin_api, f"{stem}-{uuid.uuid4().hex[:10]}")
    yield name
    kube.delete_namespace(admin_api, name)
