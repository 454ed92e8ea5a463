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

enum Kind { file @0; directory @1; other @2; }
enum OpenMode { read @0; write @1; append @2; readWrite @3; }

struct Info {
  kind @0 :Kind;
  size @1 :UInt64;
  modifiedNs @2 :Int64;
  inode @3 :UInt64;     # tells files apart (WASI's st_ino); not a path
}

struct Entry {
  name @0 :Text;
  kind @1 :Kind;
}

interface Directory @0xa05a5e2c6b2f6d06 {
  # Paths are relative, '/'-separated, and never leave this directory: no
  # '..', no absolute paths, no symbolic links anywhere on the way.
  open @0 (path :Text, mode :OpenMode) -> (file :File);
  create @1 (path :Text) -> (file :File);       # a new file (fails if it exists)
  list @2 (path :Text) -> (entries :List(Entry));  # "" lists this directory
  stat @3 (path :Text) -> (info :Info);
  remove @4 (path :Text) -> ();                 # a file, or an empty directory
  mkdir @5 (path :Text) -> ();
  subdir @6 (path :Text) -> (dir :Directory);   # same attenuation as this one
  rename @7 (from :Text, to :Text) -> ();       # within this directory; replaces `to`
}

interface File @0xa05a5e2c6b2f6d07 {
  read @0 (offset :UInt64, count :UInt32) -> (data :Data);   # at most 1 MiB
  write @1 (offset :UInt64, data :Data) -> (written :UInt32);
  append @2 (data :Data) -> (offset :UInt64);   # the offset it was written at
  truncate @3 (size :UInt64) -> ();
  stat @4 () -> (info :Info);
}

struct Variable {
  name @0 :Text;
  value @1 :Text;
}

interface Environment @0xa05a5e2c6b2f6d08 {
  # Exactly the arguments and variables the system file grants: nothing of the
  # supervisor's own environment.
  args @0 () -> (args :List(Text));
  vars @1 () -> (vars :List(Variable));
  get @2 (name :Text) -> (value :Text, present :Bool);
}
