@0xf0e7afc40966bc30;
# The interfaces of the calc example.  Interface ids are written out because
# guests call methods by (interface id, method number).

interface Calc @0xc0ffee0000000001 {
  add @0 (a :Int32, b :Int32) -> (sum :Int32);
  # Returns a new counter object, hosted by the calc compartment.
  newCounter @1 () -> (counter :Counter);
  # Adds 1..n, telling `observer` each partial sum (a call back into the caller).
  sumTo @2 (n :Int32, observer :Observer) -> (total :Int32);
}

interface Counter @0xc0ffee0000000002 {
  inc @0 (by :Int32) -> (value :Int32);
}

interface Observer @0xc0ffee0000000003 {
  step @0 (i :Int32, partial :Int32) -> ();
}
