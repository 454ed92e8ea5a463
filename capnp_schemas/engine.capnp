@0x9540ca0970c4d2a9;
# The control interface between the supervisor and one engine.
# The engine's bootstrap capability is an Engine; only the supervisor holds it.

struct Grant {
  name @0 :Text;        # the local name the guest looks up (wsuper.lookup)
  cap @1 :Capability;   # the granted capability (null if it could not be granted)
  kind @2 :Text;        # "compartment", or the host capability: "log", "directory", ...
  mount @3 :Text;       # directory grants: where a WASI program sees it ("/NAME" unless set)
}

interface Engine @0xa05a5e2c6b2f6d03 {
  # Hand the compartment its initial capabilities.  Returns the compartment's
  # main object (null unless the policy says it exports an interface) and
  # whether the module has a program to run (`_start`).
  start @0 (grants :List(Grant)) -> (main :Capability, program :Bool);

  # Run the module's `_start`.  Returns when the program ends; a trap is an
  # exception whose reason says where the guest trapped.
  run @1 () -> (exitCode :Int32);

  # Probes (see the note at the end of this file).
  describe @2 () -> (sites :Text);
  probe @3 (flags :Data, hostcalls :Bool) -> ();
  collect @4 () -> (counters :Data, events :Data, dropped :UInt64);
}

# Probes (docs/instrumentation.md).  Methods 2..4 are appended to Engine; only the
# supervisor calls them, and it checks every answer.
#   describe @2 () -> (sites :Text)
#     the probe sites compiled into the module (JSON; "" if none)
#   probe @3 (flags :Data, hostcalls :Bool) -> ()
#     set every site's flag byte (1 count, 2 events; `flags` is empty or one byte
#     a site) and whether host calls are timed
#   collect @4 () -> (counters :Data, events :Data, dropped :UInt64)
#     the sites' counters (8 bytes each, little-endian) and the events recorded
#     since the last collect (32-byte records, compartments/probing.py)
