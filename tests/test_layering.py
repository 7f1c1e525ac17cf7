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
