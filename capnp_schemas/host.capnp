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

enum Kind { file @0; directory @1; other @2; symlink @3; }
# `other`: a FIFO, socket or device.  Listed and stat'ed, never opened.
enum OpenMode { read @0; write @1; append @2; readWrite @3; }
enum Sync { none @0; data @1; full @2; }   # O_DSYNC, O_SYNC: each write reaches the disk
enum TimeSet { keep @0; now @1; to @2; }   # setTimes: leave it, the current time, or the given one

struct Info {
  kind @0 :Kind;
  size @1 :UInt64;
  modifiedNs @2 :Int64;
  inode @3 :UInt64;     # tells files apart (WASI's st_ino); not a path
  accessedNs @4 :Int64;
  changedNs @5 :Int64;  # the last change of the file's status (st_ctime)
  links @6 :UInt64;     # names the file has (st_nlink)
  device @7 :UInt64;    # st_dev: with `inode`, identifies the file
}

struct Entry {
  name @0 :Text;
  kind @1 :Kind;
  inode @2 :UInt64;     # the same as Info.inode
  cursor @3 :UInt64;    # list(path, cursor) from here continues after this entry
}

interface Directory @0xa05a5e2c6b2f6d06 {
  # Paths are relative and '/'-separated; the kernel resolves each one beneath
  # this directory (openat2 RESOLVE_BENEATH): '..' and symbolic links are
  # followed only as long as they stay beneath it, and an absolute path or a
  # link with an absolute target fails (ENOTCAPABLE).  A trailing '/' means
  # "a directory" as in POSIX.  Only regular files and directories are ever
  # opened: a FIFO, socket or device gets ENOTSUP.  Errors name an errno first
  # ("ENOENT: ...").  `follow`: follow a symbolic link in the last component
  # (links before it are always followed, beneath).
  open @0 (path :Text, mode :OpenMode, follow :Bool, append :Bool, sync :Sync) -> (file :File);
  # an existing regular file.  `append`: every write goes to the end (O_APPEND).
  create @1 (path :Text, readable :Bool, append :Bool, sync :Sync) -> (file :File);
  # a new regular file, open to write (and to read if `readable`); fails if the
  # name exists (EEXIST), even as a symbolic link.
  list @2 (path :Text, cursor :UInt64) -> (entries :List(Entry), cursor :UInt64, done :Bool,
                                          inode :UInt64);
  # "" lists this directory; '.' and '..' are not listed.  One page per call:
  # call again with the returned cursor until `done`.  `inode`: the directory's
  # own (its '.'), so that a listing needs no `stat`.
  stat @3 (path :Text, follow :Bool) -> (info :Info);
  remove @4 (path :Text) -> ();                 # a file, a link, or an empty directory
  mkdir @5 (path :Text) -> ();
  subdir @6 (path :Text, follow :Bool) -> (dir :Directory, inode :UInt64);
  # same attenuation as this one; `inode`: the directory's (what a rename or link
  # between two of them names it by, with no `stat`)
  rename @7 (from :Text, to :Text, fromDir :Text, fromInode :UInt64, toDir :Text,
             toInode :UInt64) -> ();
  # both beneath this directory; replaces `to`.  `fromDir` (if not empty): `from`
  # is resolved beneath that directory instead (itself beneath this one), which
  # must still be the directory with inode `fromInode`, else EXDEV (it was moved
  # or replaced since it was opened); `toDir`, `toInode` likewise for `to`.
  unlink @8 (path :Text) -> ();                 # anything but a directory (EISDIR)
  rmdir @9 (path :Text) -> ();                  # an empty directory (ENOTDIR, ENOTEMPTY)
  symlink @10 (target :Text, path :Text) -> (); # `target` must stay beneath this directory
  readlink @11 (path :Text, offset :UInt32, partial :Bool)
      -> (target :Text, length :UInt32, digest :UInt64);
  # the link's target whole (ENAMETOOLONG if it is longer than an answer to the
  # caller may be); with `partial`, the part from byte `offset` (a character's
  # first byte) that fits, cut at a character's end, with the whole target's
  # `length` in bytes and a `digest` of it (64 bits of BLAKE2b): a caller asks
  # again from where the part ended, and starts over if either changed (the
  # link was replaced: a new one may have the old one's inode)
  link @12 (from :Text, to :Text, fromDir :Text, fromInode :UInt64, toDir :Text,
            toInode :UInt64) -> ();
  # a hard link; the last component is not followed; `fromDir` ... as for rename
  setTimes @13 (path :Text, follow :Bool, accessedNs :Int64, accessed :TimeSet,
                modifiedNs :Int64, modified :TimeSet) -> ();
  sync @14 () -> ();                            # fsync(2) of this directory
}

interface File @0xa05a5e2c6b2f6d07 {
  # Offsets and sizes up to 2^63-1; larger ones fail with EINVAL (EFBIG past
  # the file system's limit).  read returns at most 1 MiB and at most what fits
  # in one message to the caller; fewer bytes than asked at the end of the file.
  read @0 (offset :UInt64, count :UInt32) -> (data :Data);
  write @1 (offset :UInt64, data :Data) -> (written :UInt32);
  append @2 (data :Data) -> (offset :UInt64, written :UInt32);
  # the offset it was written at, and how many bytes: fewer than given when the
  # file system filled up or the file reached its largest size (as write says)
  truncate @3 (size :UInt64) -> ();
  stat @4 () -> (info :Info);
  setAppend @5 (append :Bool) -> ();            # O_APPEND on or off (never off on an append-only grant)
  sync @6 (dataOnly :Bool) -> ();               # fdatasync(2) or fsync(2)
  setTimes @7 (accessedNs :Int64, accessed :TimeSet, modifiedNs :Int64, modified :TimeSet) -> ();
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
