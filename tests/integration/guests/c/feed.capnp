@0xe3c1a7b5d9f20a41;
# A feed hands each subscriber an object of its own in the params of a call
# back (Observer.notify), not in results (test_attenuation.py).

interface Feed {
  subscribe @0 (observer :Observer) -> ();
}

interface Observer {
  notify @0 (secret :Secret) -> ();
}

interface Secret {
  peek @0 () -> (n :Int32);
  other @1 () -> ();
}
