@0xd1efba369ebb4714;
# A struct with a field of every kind, for the single-segment copier's
# differential fuzzing (fuzz/protocol.py): pycapnp reads the original and the
# copy, and they must agree.

enum Colour { red @0; green @1; blue @2; }

struct Sample {
  u8 @0 :UInt8;
  i64 @1 :Int64;
  flag @2 :Bool;
  real @3 :Float64;
  colour @4 :Colour;
  text @5 :Text;
  data @6 :Data;
  child @7 :Sample;
  children @8 :List(Sample);
  texts @9 :List(Text);
  numbers @10 :List(UInt32);
  bits @11 :List(Bool);
  voids @12 :List(Void);
  nested @13 :List(List(UInt16));
  choice :union {
    none @14 :Void;
    small @15 :UInt16;
    name @16 :Text;
    more @17 :Sample;
  }
}
