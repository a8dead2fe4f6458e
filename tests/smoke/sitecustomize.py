"""Loaded by every Python process that tests/test_readme_commands.py starts (its folder is put on PYTHONPATH),
torchrun's workers included: torchvision's CIFAR-10 reader checks the md5 sums of the real files, which the
test's generated CIFAR-10 folder (the real on-disk format, random pixels) cannot match. This reduces that one
check to "the file exists", the moment torchvision.datasets.cifar is first imported; nothing else changes."""
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
