"""The native parts (setuptools ext_modules, built by `pip install -e .` with the
system C compiler).  Everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("supervisor._fastlane", ["supervisor/_fastlane.c"],
              depends=["supervisor/fastwire.h"],
              extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-braces"],
              optional=True),
])
