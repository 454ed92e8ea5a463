@0xc6a1d2b3e4f50617;
# The Probe host capability (docs/instrumentation.md): the events of the probes
# on one compartment, read by an analysis compartment.  A file of its own (not
# host.capnp) so that C analyses can be built against it with `wsuper build
# --schema capnp_schemas/probe.capnp`.

struct ProbeEvent {
  # One thing a probe saw (docs/instrumentation.md).  `kind`: "call" (the router
  # delivered a call: caller -> callee through `grant`, `name` is Interface.method,
  # `outcome` returned/failed/denied), "hostcall" (`name` is the import, `result`
  # what it returned), "enter"/"exit" (`name` is the function), "block", "store"
  # (`address`, `size`).  Times are CLOCK_MONOTONIC nanoseconds.
  kind @0 :Text;
  compartment @1 :Text;
  name @2 :Text;
  timeNs @3 :Int64;
  durationNs @4 :Int64;
  caller @5 :Text;
  callee @6 :Text;
  grant @7 :Text;
  outcome @8 :Text;
  address @9 :UInt64;
  size @10 :UInt32;
  function @11 :UInt32;
  result @12 :Int64;
  probes @13 :List(Text);   # the probes that saw it
}

interface Probe @0xa05a5e2c6b2f6d09 {
  # The events of the probes on one compartment (the grant's `on`), for an
  # analysis compartment.  It reads them; it cannot add, change or remove probes:
  # only the operator can (wsuper probe, the admin socket).
  read @0 (max :UInt32, waitMs :UInt32) -> (events :List(ProbeEvent), dropped :UInt64);
  # At most `max` events (at most 1024), oldest first.  With none waiting, the
  # call waits up to `waitMs` (at most 10000) for one.  `dropped`: events lost
  # since the last read because this grant's queue (10000) was full.
  target @1 () -> (compartment :Text);
}
