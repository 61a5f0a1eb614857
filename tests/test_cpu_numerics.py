"""`cpu_numerics`: a process restarts itself once under the pinned CPU numerics, keeps its command line, and
reports what it computes with. (That the pin makes another CPU build the same demo world is
tests/test_demo_world.py's.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from lancet_ds import cpu_numerics

SCRIPT = """
import json, sys
from lancet_ds import cpu_numerics
print("started", sys.argv[1:], flush=True)
cpu_numerics.restart_pinned("test")
cpu_numerics.restart_pinned("test")  # pinned now: no second restart
print(json.dumps(cpu_numerics.state()))
"""


@pytest.mark.skipif(not cpu_numerics.supported(), reason="the pin names x86-64 libraries' settings")
def test_a_process_restarts_once_under_the_pin_with_its_arguments():
    env = {k: v for k, v in os.environ.items() if k not in cpu_numerics.PINNED}
    env["ATEN_CPU_CAPABILITY"] = "default"  # what the machine would otherwise choose is overridden
    proc = subprocess.run([sys.executable, "-u", "-c", SCRIPT, "a", "--b=1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    lines = proc.stdout.splitlines()
    assert lines.count("started ['a', '--b=1']") == 2  # once before the restart, once after: same arguments
    assert sum("restarting under machine-independent CPU numerics" in x for x in lines) == 1
    state = json.loads(lines[-1])
    assert state["pinned"] and state["device"] == "cpu" and state["torch_cpu_capability"] == cpu_numerics.PINNED_CAPABILITY
    assert state["threads_per_rank"] == 1 and state["env"] == cpu_numerics.PINNED
    # the vendor decides whether MKL follows the AVX2 branch (Intel) or falls back to AUTO: world.json names it
    assert state["cpu_vendor"] == cpu_numerics.cpu_vendor()
    if Path("/proc/cpuinfo").exists():
        assert state["cpu_vendor"] in Path("/proc/cpuinfo").read_text(errors="replace")


@pytest.mark.skipif(cpu_numerics.pinned(), reason="this test process was started pinned")
def test_an_unpinned_process_says_so():
    state = cpu_numerics.state()  # this test process was not restarted: world.json would say it was not pinned
    assert not state["pinned"] and state["env"] != cpu_numerics.PINNED
