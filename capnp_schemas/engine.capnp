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
}
