"""The rehearsal works for a normal user too: without the right to bind port 80 it moves into a private network.

The test drops root the way a normal login lacks it: a user namespace where it is uid 1000, with no capability on
the host's network (so port 80 is out of reach), then runs the CLI exactly as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import WORKDIR

pytestmark = pytest.mark.usefixtures("no_leftovers")


def test_rehearsal_as_a_normal_user():
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is part of every Debian system"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own network: its own Prefect
    check = subprocess.run(
        [unshare, "--user", "--map-user=1000", "--map-group=1000", "--", sys.executable, "-c",
         "import os, socket\ntry: socket.socket().bind(('127.0.0.1', 80))\nexcept PermissionError: print('denied', os.geteuid())"],
        capture_output=True, text=True, env=env,
    )
    assert check.stdout.strip() == "denied 1000"  # really a normal user: port 80 is out of reach
    proc = subprocess.run(
        [unshare, "--user", "--map-user=1000", "--map-group=1000", "--", sys.executable, "-m", "flows.notion_to_github",
         "--repo", "octo/as-a-user", "--rehearsal", "--json"],
        cwd=WORKDIR, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["issue_url"] == "https://github.com/octo/as-a-user/issues/1"
    assert result["rehearsal_issues"][0]["repo"] == "octo/as-a-user"
