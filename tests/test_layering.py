"""pudnet/ is plain PyTorch: importing all of it must not import Ray."""
import pkgutil
import subprocess
import sys

import pudnet


def test_pudnet_imports_no_ray():
    names = [m.name for m in pkgutil.walk_packages(pudnet.__path__, "pudnet.")]
    code = ";".join(f"import {n}" for n in names) + ";import sys;assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert len(names) >= 5


def test_client_imports_no_torch():
    """``pudnet predict`` needs only requests: importing pudnet.client must not import torch."""
    code = ("import sys;sys.modules['torch']=None;import pudnet.client;"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None")
    subprocess.run([sys.executable, "-c", code], check=True)
