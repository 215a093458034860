"""The SLURM tests need Debian's slurm-wlm. Without it they skip, naming the package, unless
CTXF_REQUIRE_SLURM=1 (set by .ci/run), which turns a missing SLURM into a failure."""

from __future__ import annotations

import os

import pytest

from local_cluster import LocalSlurm, missing_commands


def require_slurm() -> None:
    missing = missing_commands()
    if not missing:
        return
    reason = (f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge "
              f"to run these tests")
    if os.environ.get("CTXF_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason}; CTXF_REQUIRE_SLURM=1 requires them", pytrace=False)
    pytest.skip(f"{reason} (CTXF_REQUIRE_SLURM=1 makes this a failure)")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """slurmctld + slurmd on this machine for the whole session; stopped on success and on failure."""
    require_slurm()
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
