import ctypes
import subprocess
import sys

import pytest

# a fresh interpreter per case: the thresholds are process-wide and cannot be read back
PROBE = """
import resource, sys, torch
from otdistill.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.ones(4 << 20)  # 16 MB (a batch's activations' size), freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(4 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="glibc's mallopt only")
def test_kept_memory_serves_the_next_block_without_page_faults():
    pages = (16 << 20) // 4096
    assert page_faults("default") > pages // 2  # glibc unmapped the block and faults a new one in
    assert page_faults("keep") < pages // 20  # the same pages again, from the heap
