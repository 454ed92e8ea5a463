@0xd1f0a3b2c4e5f601;
# Every field type the C bindings support, for the round-trip tests (test_bindgen.py).

enum Color { red @0; green @1; blue @2; }

struct Inner {
  n @0 :Int32;
  label @1 :Text;
}

struct Everything {
  b @0 :Bool;
  i8 @1 :Int8;
  i16 @2 :Int16;
  i32 @3 :Int32;
  i64 @4 :Int64;
  u8 @5 :UInt8;
  u16 @6 :UInt16;
  u32 @7 :UInt32;
  u64 @8 :UInt64;
  f32 @9 :Float32;
  f64 @10 :Float64;
  text @11 :Text;
  data @12 :Data;
  color @13 :Color;
  inner @14 :Inner;
  ints @15 :List(Int64);
  texts @16 :List(Text);
  inners @17 :List(Inner);
  flags @18 :List(Bool);
  colors @19 :List(Color);
  withDefault @20 :Int32 = 42;
  flag @21 :Bool = true;
  peer @22 :Echo;
  nothing @23 :Void;
}

interface Echo {
  echo @0 (value :Everything) -> (value :Everything);   # decode, then encode again
  describe @1 (value :Everything) -> (text :Text);      # decode, then print
  make @2 (seed :Int32) -> (value :Everything);         # encode from nothing
  callPeer @3 (peer :Echo, seed :Int32) -> (text :Text); # call a capability handed in
}
