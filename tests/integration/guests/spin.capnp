@0xd3a7e5c1b0a99f01;
# A test server that misbehaves on request.
interface Spin @0xc0ffee00000000f1 {
  spin @0 () -> ();                    # loops forever
  ping @1 () -> (value :Int32);        # answers 7 at once
  slow @2 () -> (value :Int32);        # burns a few million instructions, answers 1
}
