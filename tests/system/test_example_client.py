"""The example scheduler client in examples/ works as docs/api.md says."""

import os
import sys

from tools.lab import ROOT, Namespace


def test_workload_lifecycle_example(lab, pools, ipam_client):
    """As a scheduler: its own certificate (scheduler:example) over TLS."""
    host = lab.add_host("a")
    workload = Namespace(lab, f"{lab.prefix}-ex")
    result = host.ns.run(sys.executable, str(ROOT / "examples" / "workload_lifecycle.py"),
                         f"--netns={workload.path}", check=False,
                         env={**host.env, **lab.identities.env("scheduler:example"),
                              "PYTHONPATH": str(ROOT)})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "added " in out and "10.20." in out
    assert "retried add: same endpoint True, same addresses True" in out
    assert "1 endpoint(s) of orchestrator 'example'" in out
    assert "profiles now ['example_2']" in out
    assert "removing again: NOT_FOUND" in out
    assert sum(p.allocated for p in ipam_client.get_usage().pools) == 0
    assert os.path.exists(workload.path)
