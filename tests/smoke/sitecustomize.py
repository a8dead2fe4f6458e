"""Loaded by every Python process that tests/test_readme_commands.py starts (its folder is put on PYTHONPATH),
torchrun's workers included. Two things:
- torchvision's CIFAR-10 reader checks the md5 sums of the real files, which the test's generated CIFAR-10 folder
  (the real on-disk format, random pixels) cannot match. This reduces that one check to "the file exists", the
  moment torchvision.datasets.cifar is first imported.
- With SAT_WARM_SOCKET set (the test sets it), the process hands its work to the warm server of warm_python.py,
  which runs it in a fork that has torch, torchvision, ... imported already, and exits with its exit code."""
import importlib.abc
import importlib.util
import os
import sys

TARGET = "torchvision.datasets.cifar"


class _PatchCifarOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)               # let the normal finders locate the real module
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchCifarOnImport())

if os.environ.get("SAT_WARM_SOCKET"):
    import warm_python
    warm_python.hand_over(os.environ["SAT_WARM_SOCKET"])
