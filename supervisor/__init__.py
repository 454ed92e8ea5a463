"""wsuper: a capability-secure supervisor for untrusted WebAssembly plugins.

General layout (pure modules first; trio only at the edge):
  policy.py     system.toml -> System (pure; errors name file, line and key)
  preflight.py  schemas, interface ids, module import checks (before any process)
  router.py     the reference monitor: c-lists, delivery, translation (pure)
  runtime.py    trio: engine processes, sockets, external endpoint, shutdown
  cli.py        the `wsuper` command

The wire protocol (capnp_schemas.protocol) and the engine (compartments.engine)
are separate packages; the engine never imports this one.
"""
__version__ = "0.1.0"
