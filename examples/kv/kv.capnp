@0xb2d6c1e0f4a39b17;
# A key-value store that persists to an append-only file (store.c), its
# client (client.c), and a listener the store is handed at run time.

interface Store {
  put @0 (key :Text, value :Text) -> ();
  get @1 (key :Text) -> (value :Text, found :Bool);
  keys @2 () -> (keys :List(Text));
  subscribe @3 (listener :Listener) -> ();   # called back on every put
  remove @4 (key :Text) -> (found :Bool);     # the demo's client may not call it
}

interface Listener {
  changed @0 (key :Text, value :Text) -> ();
}
