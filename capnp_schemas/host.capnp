@0xb699cadc9cb5a1f1;
# Capabilities hosted by the supervisor itself.

interface Log @0xa05a5e2c6b2f6d01 {
  # Append one line of text to the compartment's log; the supervisor prints it
  # prefixed with the compartment's name.
  write @0 (text :Text) -> ();
}

interface Gateway @0xa05a5e2c6b2f6d02 {
  # The bootstrap capability of the external endpoint (a Unix socket).
  # `get` returns the main object of a compartment that the system marks
  # `external = true`; anything else is an error.
  get @0 (name :Text) -> (cap :Capability);
  list @1 () -> (names :List(Text));
}

interface Clock @0xa05a5e2c6b2f6d04 {
  # Nanoseconds since the Unix epoch (can jump), and since an arbitrary point
  # (never goes back).
  wall @0 () -> (ns :Int64);
  monotonic @1 () -> (ns :Int64);
}

interface Random @0xa05a5e2c6b2f6d05 {
  # `count` bytes from the operating system's CSPRNG; at most 65536 per call.
  bytes @0 (count :UInt32) -> (data :Data);
}
