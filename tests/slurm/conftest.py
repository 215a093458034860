"""The SLURM cluster tests need Debian's slurm-wlm and root. Without them they skip and say why,
unless CTXF_REQUIRE_SLURM=1 (set by .ci/run), which turns a missing SLURM into a failure."""

from __future__ import annotations

import os

import pytest

from local_cluster import LocalSlurm, missing_commands


def require_slurm() -> None:
    missing = missing_commands()
    if missing:
        reason = (f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge "
                  f"to run these tests")
    elif os.geteuid() != 0:
        reason = "the local SLURM cluster needs root (slurmd starts jobs as their user): run these tests as root"
    else:
        return
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
