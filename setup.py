"""The native parts (setuptools ext_modules, built by `pip install -e .` with the
system C compiler).  Everything else is in pyproject.toml."""
from setuptools import Extension, setup

FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wno-missing-braces"]

# optional=True: without a compiler, wsuper installs and runs on its Python paths
# (slower; the supervisor says so once at start).
setup(ext_modules=[
    Extension("capnp_schemas._fastwire", ["capnp_schemas/_fastwire.c"],
              depends=["capnp_schemas/fastwire.h"], extra_compile_args=FLAGS, optional=True),
    Extension("compartments._fastcall", ["compartments/_fastcall.c"],
              depends=["capnp_schemas/fastwire.h"], extra_compile_args=FLAGS,
              optional=True),
    Extension("supervisor._fastlane", ["supervisor/_fastlane.c"],
              depends=["capnp_schemas/fastwire.h"],
              extra_compile_args=FLAGS, optional=True),
])
