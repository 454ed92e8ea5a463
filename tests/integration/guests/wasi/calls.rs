// WASI calls made directly (no libc in between), each checked against what
// wasmtime's own WASI does.  test_wasi_conformance.py runs this program under
// wasmtime (wasmtime-py's WASI) and under wsuper, on fresh copies of the same
// directory, and compares the lines.  Usage: calls [GROUP...] (default: all
// groups that behave alike under both; "wsuper" adds what only wsuper does).
//
// Built with Debian's rustc for wasm32-wasi and no crates: the imports are
// declared here with the raw types of wasi_snapshot_preview1.
use std::convert::TryInto;
use std::env;

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn path_open(fd: i32, dirflags: i32, path: *const u8, path_len: i32, oflags: i32,
                 base: i64, inheriting: i64, fdflags: i32, out: *mut i32) -> i32;
    fn fd_close(fd: i32) -> i32;
    fn fd_readdir(fd: i32, buf: *mut u8, len: i32, cookie: i64, used: *mut i32) -> i32;
    fn fd_filestat_get(fd: i32, out: *mut Filestat) -> i32;
    fn path_filestat_get(fd: i32, flags: i32, path: *const u8, len: i32, out: *mut Filestat) -> i32;
    fn fd_fdstat_get(fd: i32, out: *mut Fdstat) -> i32;
    fn fd_fdstat_set_flags(fd: i32, flags: i32) -> i32;
    fn fd_write(fd: i32, iovs: *const Iovec, n: i32, out: *mut i32) -> i32;
    fn fd_read(fd: i32, iovs: *const Iovec, n: i32, out: *mut i32) -> i32;
    fn fd_seek(fd: i32, offset: i64, whence: i32, out: *mut i64) -> i32;
    fn path_create_directory(fd: i32, path: *const u8, len: i32) -> i32;
    fn path_remove_directory(fd: i32, path: *const u8, len: i32) -> i32;
    fn path_unlink_file(fd: i32, path: *const u8, len: i32) -> i32;
    fn path_symlink(old: *const u8, old_len: i32, fd: i32, new: *const u8, new_len: i32) -> i32;
    fn path_readlink(fd: i32, path: *const u8, len: i32, buf: *mut u8, buf_len: i32,
                     used: *mut i32) -> i32;
    fn path_link(old_fd: i32, flags: i32, old: *const u8, old_len: i32, new_fd: i32,
                 new: *const u8, new_len: i32) -> i32;
    fn path_rename(fd: i32, old: *const u8, old_len: i32, new_fd: i32, new: *const u8,
                   new_len: i32) -> i32;
    fn path_filestat_set_times(fd: i32, flags: i32, path: *const u8, len: i32, atim: i64,
                               mtim: i64, fst: i32) -> i32;
    fn fd_filestat_set_times(fd: i32, atim: i64, mtim: i64, fst: i32) -> i32;
    fn fd_filestat_set_size(fd: i32, size: i64) -> i32;
    fn fd_sync(fd: i32) -> i32;
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Filestat { dev: u64, ino: u64, filetype: u8, nlink: u64, size: u64, atim: u64, mtim: u64, ctim: u64 }
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Fdstat { filetype: u8, flags: u16, base: u64, inheriting: u64 }
#[repr(C)]
struct Iovec { buf: *const u8, len: usize }

const DIR: i32 = 3;
const EXIST: i32 = 20; const INVAL: i32 = 28; const ISDIR: i32 = 31; const LOOP: i32 = 32;
const NOENT: i32 = 44; const NOTDIR: i32 = 54; const NOTEMPTY: i32 = 55; const NOTSUP: i32 = 58;
const PERM: i32 = 63; const NOTCAPABLE: i32 = 76; const BADF: i32 = 8; const XDEV: i32 = 75;
const CREAT: i32 = 1; const DIRECTORY: i32 = 2; const EXCL: i32 = 4; const TRUNC: i32 = 8;
const APPEND: i32 = 1; const SYNC: i32 = 16; const DSYNC: i32 = 2; const NONBLOCK: i32 = 4;
const READ: i64 = 1 << 1; const WRITE: i64 = 1 << 6; const SEEK: i64 = 1 << 2;
const FOLLOW: i32 = 1;
const ATIM: i32 = 1; const ATIM_NOW: i32 = 2; const MTIM: i32 = 4; const MTIM_NOW: i32 = 8;
const T_DIR: u8 = 3; const T_FILE: u8 = 4; const T_LINK: u8 = 7;

static mut FAILURES: i32 = 0;

fn check(name: &str, ok: bool, detail: String) {
    if ok {
        println!("ok {}", name);
    } else {
        println!("FAIL {}: {}", name, detail);
        unsafe { FAILURES += 1; }
    }
}

fn is(name: &str, got: i32, want: &[i32]) {
    check(name, want.contains(&got), format!("errno {} (want one of {:?})", got, want));
}

fn open(dir: i32, follow: i32, path: &str, oflags: i32, rights: i64, fdflags: i32) -> Result<i32, i32> {
    let mut fd = -1;
    let e = unsafe { path_open(dir, follow, path.as_ptr(), path.len() as i32, oflags, rights,
                               0, fdflags, &mut fd) };
    if e == 0 { Ok(fd) } else { Err(e) }
}
fn err<T>(r: Result<T, i32>) -> i32 { match r { Ok(_) => 0, Err(e) => e } }
fn close(fd: i32) { unsafe { fd_close(fd); } }
fn mkdir(p: &str) -> i32 { unsafe { path_create_directory(DIR, p.as_ptr(), p.len() as i32) } }
fn rmdir(p: &str) -> i32 { unsafe { path_remove_directory(DIR, p.as_ptr(), p.len() as i32) } }
fn unlink(p: &str) -> i32 { unsafe { path_unlink_file(DIR, p.as_ptr(), p.len() as i32) } }
fn symlink(target: &str, p: &str) -> i32 {
    unsafe { path_symlink(target.as_ptr(), target.len() as i32, DIR, p.as_ptr(), p.len() as i32) }
}
fn touch(p: &str) -> i32 { err(open(DIR, 0, p, CREAT, READ | WRITE, 0).map(close)) }
fn stat(p: &str, flags: i32) -> Result<Filestat, i32> {
    let mut s = Filestat::default();
    let e = unsafe { path_filestat_get(DIR, flags, p.as_ptr(), p.len() as i32, &mut s) };
    if e == 0 { Ok(s) } else { Err(e) }
}
fn fstat(fd: i32) -> Filestat { let mut s = Filestat::default(); unsafe { fd_filestat_get(fd, &mut s); } s }
fn fdstat(fd: i32) -> Fdstat { let mut s = Fdstat::default(); unsafe { fd_fdstat_get(fd, &mut s); } s }
fn write(fd: i32, data: &[u8]) -> Result<i32, i32> {
    let iov = Iovec { buf: data.as_ptr(), len: data.len() };
    let mut n = 0;
    let e = unsafe { fd_write(fd, &iov, 1, &mut n) };
    if e == 0 { Ok(n) } else { Err(e) }
}
fn read(fd: i32, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let iov = Iovec { buf: buf.as_mut_ptr(), len };
    let mut n = 0;
    let e = unsafe { fd_read(fd, &iov, 1, &mut n) };
    if e == 0 { buf.truncate(n as usize); Ok(buf) } else { Err(e) }
}
fn seek(fd: i32, off: i64) { let mut o = 0; unsafe { fd_seek(fd, off, 0, &mut o); } }

/// Every entry of a directory, through buffers of `size` bytes: (name, inode, type).
fn list(fd: i32, size: usize) -> Vec<(String, u64, u8)> {
    let mut out = Vec::new();
    let mut cookie = 0u64;
    let mut buf = vec![0u8; size];
    loop {
        let mut used = 0;
        let e = unsafe { fd_readdir(fd, buf.as_mut_ptr(), size as i32, cookie as i64, &mut used) };
        if e != 0 { out.push((format!("error {}", e), 0, 0)); return out; }
        let used = used as usize;
        let mut pos = 0;
        let mut progressed = false;
        while pos + 24 <= used {
            let next = u64::from_le_bytes(buf[pos..pos + 8].try_into().unwrap());
            let ino = u64::from_le_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
            let namelen = u32::from_le_bytes(buf[pos + 16..pos + 20].try_into().unwrap()) as usize;
            let ftype = buf[pos + 20];
            if pos + 24 + namelen > used { break; }
            out.push((String::from_utf8_lossy(&buf[pos + 24..pos + 24 + namelen]).into_owned(), ino, ftype));
            cookie = next;
            pos += 24 + namelen;
            progressed = true;
        }
        if used < size { return out; }
        if !progressed { out.push(("buffer too small".into(), 0, 0)); return out; }
    }
}

fn readdir_group() {
    mkdir("rd");
    touch("rd/file");
    mkdir("rd/sub");
    let fd = open(DIR, 0, "rd", DIRECTORY, 0, 0).unwrap();
    let me = fstat(fd);
    let entries = list(fd, 4096);
    let dot = entries.iter().find(|e| e.0 == ".");
    check("readdir-dot-inode", dot.map(|e| e.1) == Some(me.ino) && dot.map(|e| e.2) == Some(T_DIR),
          format!("{:?} vs {}", dot, me.ino));
    check("readdir-dotdot", entries.iter().any(|e| e.0 == ".." && e.2 == T_DIR), format!("{:?}", entries));
    let file = entries.iter().find(|e| e.0 == "file").map(|e| (e.1, e.2));
    let st = stat("rd/file", 0).unwrap();
    check("readdir-file-inode", file == Some((st.ino, T_FILE)), format!("{:?} vs {}", file, st.ino));
    let sub = entries.iter().find(|e| e.0 == "sub").map(|e| e.2);
    check("readdir-dir-type", sub == Some(T_DIR), format!("{:?}", sub));
    check("readdir-count", entries.len() == 4, format!("{:?}", entries));
    close(fd);
    // many entries, through a small buffer: each exactly once
    mkdir("many");
    for i in 0..300 { touch(&format!("many/entry-{:03}", i)); }
    let fd = open(DIR, 0, "many", DIRECTORY, 0, 0).unwrap();
    let mut names: Vec<String> = list(fd, 128).into_iter().map(|e| e.0).collect();
    names.sort();
    let mut want: Vec<String> = (0..300).map(|i| format!("entry-{:03}", i)).collect();
    want.push(".".into()); want.push("..".into());
    want.sort();
    check("readdir-small-buffer", names == want, format!("{} names", names.len()));
    // a file made after the listing started is there when it starts again
    touch("many/late");
    let again = list(fd, 4096);
    check("readdir-again-sees-new", again.iter().any(|e| e.0 == "late") && again.len() == 303,
          format!("{} entries", again.len()));
    close(fd);
}

fn rights_group() {
    let s = fdstat(DIR);
    check("preopen-rights", s.base == 0x7B7FE00, format!("{:#x}", s.base));
    check("preopen-seek-right", s.base & SEEK as u64 == 0, format!("{:#x}", s.base));
    let fd = open(DIR, 0, ".", DIRECTORY, SEEK, 0).unwrap();
    check("dir-no-seek-right", fdstat(fd).base & SEEK as u64 == 0, format!("{:#x}", fdstat(fd).base));
    let mut off = 0i64;
    is("dir-seek", unsafe { fd_seek(fd, 0, 1, &mut off) }, &[BADF]);
    close(fd);
    is("open-dot-directory-rw", err(open(DIR, 0, ".", DIRECTORY, READ | WRITE, 0)), &[ISDIR]);
    is("open-dot-directory-r", err(open(DIR, 0, ".", DIRECTORY, READ, 0).map(close)), &[0]);
    is("open-dot-rw", err(open(DIR, 0, ".", 0, READ | WRITE, 0)), &[ISDIR]);
    is("open-dot-nonblock", err(open(DIR, 0, ".", 0, 0, NONBLOCK).map(close)), &[0]);
    touch("rw");
    let fd = open(DIR, 0, "rw", 0, READ, 0).unwrap();
    let s = fdstat(fd);
    check("file-rights-ro", s.base & READ as u64 != 0 && s.base & WRITE as u64 == 0, format!("{:#x}", s.base));
    is("write-ro", err(write(fd, b"x")), &[BADF, NOTCAPABLE]);
    close(fd);
}

fn flags_group() {
    let fd = open(DIR, 0, "append", CREAT, READ | WRITE, APPEND).unwrap();
    check("append-flag", fdstat(fd).flags == APPEND as u16, format!("{}", fdstat(fd).flags));
    write(fd, b"aaaa").unwrap();
    seek(fd, 0);
    write(fd, b"bb").unwrap();
    check("append-appends", stat("append", 0).map(|s| s.size) == Ok(6), format!("{:?}", stat("append", 0).map(|s| s.size)));
    is("clear-append", unsafe { fd_fdstat_set_flags(fd, 0) }, &[0]);
    check("append-cleared", fdstat(fd).flags == 0, format!("{}", fdstat(fd).flags));
    seek(fd, 0);
    write(fd, b"C").unwrap();
    seek(fd, 0);
    let r = read(fd, 10);
    check("overwrites-after-clear", r == Ok(b"Caaabb".to_vec()), format!("{:?}", r));
    close(fd);
    // SYNC and DSYNC: honoured and shown, or refused (never dropped)
    touch("sync");
    match open(DIR, 0, "sync", CREAT, READ | WRITE, APPEND | SYNC) {
        Ok(fd) => {
            check("sync-flag-kept", fdstat(fd).flags == (APPEND | SYNC) as u16, format!("{}", fdstat(fd).flags));
            check("sync-write", write(fd, b"x") == Ok(1), String::new());
            close(fd);
        }
        Err(e) => is("sync-flag-kept", e, &[NOTSUP]),
    }
    match open(DIR, 0, "dsync", CREAT, WRITE, DSYNC) {
        Ok(fd) => { check("dsync-flag-kept", fdstat(fd).flags == DSYNC as u16, format!("{}", fdstat(fd).flags)); close(fd); }
        Err(e) => is("dsync-flag-kept", e, &[NOTSUP]),
    }
    let fd = open(DIR, 0, "sync", 0, READ | WRITE, 0).unwrap();
    is("fd-sync", unsafe { fd_sync(fd) }, &[0]);
    close(fd);
}

fn paths_group() {
    mkdir("p");
    mkdir("p/nested");
    touch("p/nested/file");
    is("dotdot-inside", err(open(DIR, 0, "p/.//nested/../../p/nested/../nested///./file", 0, READ, 0).map(close)), &[0]);
    is("dotdot-outside", err(open(DIR, 0, "p/../../x", 0, READ, 0)), &[PERM]);
    is("absolute", err(open(DIR, 0, "/p/nested/file", 0, READ, 0)), &[PERM]);
    is("trailing-slash-file", err(open(DIR, 0, "p/nested/file/", 0, READ, 0)), &[NOTDIR]);
    is("trailing-slashes-file", err(open(DIR, 0, "p/nested/file///", 0, READ, 0)), &[NOTDIR]);
    is("trailing-slash-dir", err(open(DIR, 0, "p/nested/", 0, 0, 0).map(close)), &[0]);
    is("nul-in-path", err(open(DIR, 0, "p/nested/file\0", 0, READ, 0)), &[INVAL, NOENT]);
    is("unlink-slash", unlink("p/nested/file/"), &[NOTDIR]);
    check("unlink-slash-kept-it", stat("p/nested/file", 0).is_ok(), String::new());
    is("unlink-dir", unlink("p/nested"), &[ISDIR]);
    is("unlink-dir-slash", unlink("p/nested/"), &[ISDIR]);
    is("rmdir-file", rmdir("p/nested/file"), &[NOTDIR]);
    is("rmdir-file-slash", rmdir("p/nested/file/"), &[NOTDIR]);
    is("rmdir-nonempty", rmdir("p/nested"), &[NOTEMPTY]);
    mkdir("p/src");
    let rn = |a: &str, b: &str| unsafe { path_rename(DIR, a.as_ptr(), a.len() as i32, DIR, b.as_ptr(), b.len() as i32) };
    is("rename-dir-slash", rn("p/src/", "p/dst"), &[0]);
    is("rename-dir-slash-both", rn("p/dst/", "p/src/"), &[0]);
    is("rename-file-slash", rn("p/nested/file/", "p/x"), &[NOTDIR]);
    is("rename-file-to-dir", rn("p/nested/file", "p/src"), &[ISDIR]);
    is("unlink-file", unlink("p/nested/file"), &[0]);
    is("excl-existing", err(open(DIR, 0, "rw", CREAT | EXCL, 0, 0)), &[EXIST]);
    is("missing", err(open(DIR, 0, "missing", 0, 0, 0)), &[NOENT]);
    let fd = open(DIR, 0, "trunc", CREAT, WRITE, 0).unwrap();
    write(fd, b"to be cut").unwrap();
    close(fd);
    is("trunc", err(open(DIR, 0, "trunc", TRUNC, READ | WRITE, 0).map(close)), &[0]);
    check("trunc-size", stat("trunc", 0).map(|s| s.size) == Ok(0), String::new());
}

fn symlink_group() {
    mkdir("s");
    mkdir("s/target-dir");
    touch("s/target-file");
    is("symlink-file", symlink("target-file", "s/to-file"), &[0]);
    is("symlink-dir", symlink("target-dir", "s/to-dir"), &[0]);
    is("symlink-dangling", symlink("nothing", "s/dangling"), &[0]);
    is("symlink-loop", symlink("loop", "s/loop"), &[0]);
    is("symlink-absolute", symlink("/", "s/root"), &[PERM, NOTCAPABLE]);
    is("symlink-exists", symlink("x", "s/to-file"), &[EXIST]);
    is("symlink-slash-missing", symlink("x", "s/new/"), &[NOENT]);
    is("symlink-slash-dir", symlink("x", "s/target-dir/"), &[EXIST]);
    is("symlink-slash-file", symlink("x", "s/target-file/"), &[NOTDIR]);
    is("symlink-slash-link", symlink("x", "s/to-file/"), &[NOTDIR]);
    is("symlink-slash-link-to-dir", symlink("x", "s/to-dir/"), &[EXIST]);
    is("symlink-slash-dangling", symlink("x", "s/dangling/"), &[NOENT]);
    let l = stat("s/to-file", 0);
    check("lstat-link", l.map(|s| s.filetype) == Ok(T_LINK), format!("{:?}", l.map(|s| s.filetype)));
    let f = stat("s/to-file", FOLLOW);
    check("stat-follow", f.map(|s| s.filetype) == Ok(T_FILE), format!("{:?}", f.map(|s| s.filetype)));
    let d = stat("s/to-dir", FOLLOW);
    check("stat-follow-dir", d.map(|s| s.filetype) == Ok(T_DIR), String::new());
    is("open-link-nofollow", err(open(DIR, 0, "s/to-file", 0, READ, 0)), &[LOOP]);
    is("open-link-follow", err(open(DIR, FOLLOW, "s/to-file", 0, READ, 0).map(close)), &[0]);
    is("opendir-link-nofollow", err(open(DIR, 0, "s/to-dir", DIRECTORY, 0, 0)), &[LOOP, NOTDIR]);
    is("opendir-link-follow", err(open(DIR, FOLLOW, "s/to-dir", DIRECTORY, 0, 0).map(close)), &[0]);
    is("opendir-link-to-file", err(open(DIR, FOLLOW, "s/to-file", DIRECTORY, 0, 0)), &[NOTDIR]);
    is("open-dangling", err(open(DIR, FOLLOW, "s/dangling", 0, READ, 0)), &[NOENT]);
    is("open-dangling-nofollow", err(open(DIR, 0, "s/dangling", 0, READ, 0)), &[LOOP]);
    is("opendir-dangling", err(open(DIR, 0, "s/dangling", DIRECTORY, 0, 0)), &[NOTDIR, LOOP]);
    is("open-loop", err(open(DIR, FOLLOW, "s/loop", 0, READ, 0)), &[LOOP]);
    is("through-link", err(open(DIR, 0, "s/to-dir/../target-file", 0, READ, 0).map(close)), &[0]);
    let mut buf = [0u8; 32];
    let mut used = 0;
    let p = "s/to-file";
    is("readlink", unsafe { path_readlink(DIR, p.as_ptr(), p.len() as i32, buf.as_mut_ptr(), 32, &mut used) }, &[0]);
    check("readlink-text", &buf[..used as usize] == b"target-file", format!("{:?}", &buf[..used as usize]));
    let mut small = [0u8; 4];
    unsafe { path_readlink(DIR, p.as_ptr(), p.len() as i32, small.as_mut_ptr(), 4, &mut used) };
    check("readlink-cut", used == 4 && &small == b"targ", format!("{} {:?}", used, small));
    let q = "s/target-file";
    is("readlink-not-link", unsafe { path_readlink(DIR, q.as_ptr(), q.len() as i32, buf.as_mut_ptr(), 32, &mut used) }, &[INVAL]);
    // times on the link itself, and on what it names
    let before = stat("s/target-file", 0).unwrap();
    let r = unsafe { path_filestat_set_times(DIR, 0, p.as_ptr(), p.len() as i32, 0, 1_000_000_000_000i64, MTIM) };
    is("times-link", r, &[0]);
    check("times-link-itself", stat("s/to-file", 0).map(|s| s.mtim) == Ok(1_000_000_000_000)
          && stat("s/target-file", 0).map(|s| s.mtim) == Ok(before.mtim), String::new());
    let r = unsafe { path_filestat_set_times(DIR, FOLLOW, p.as_ptr(), p.len() as i32, 0, 2_000_000_000_000, MTIM) };
    is("times-follow", r, &[0]);
    check("times-follow-target", stat("s/target-file", 0).map(|s| s.mtim) == Ok(2_000_000_000_000), String::new());
    is("unlink-link", unlink("s/to-dir"), &[0]);
    check("unlink-link-kept-target", stat("s/target-dir", 0).is_ok(), String::new());
}

fn link_group() {
    mkdir("h");
    mkdir("h/sub");
    touch("h/file");
    let ln = |a: &str, fd: i32, b: &str, flags: i32| unsafe {
        path_link(DIR, flags, a.as_ptr(), a.len() as i32, fd, b.as_ptr(), b.len() as i32) };
    is("link", ln("h/file", DIR, "h/second", 0), &[0]);
    let a = stat("h/file", 0).unwrap();
    let b = stat("h/second", 0).unwrap();
    check("link-same-inode", a.ino == b.ino && a.dev == b.dev && a.nlink == 2 && b.nlink == 2,
          format!("{} {} {}", a.ino, b.ino, a.nlink));
    is("link-exists", ln("h/file", DIR, "h/second", 0), &[EXIST]);
    is("link-self", ln("h/file", DIR, "h/file", 0), &[EXIST]);
    is("link-to-dir-name", ln("h/file", DIR, "h/sub", 0), &[EXIST]);
    is("link-a-dir", ln("h/sub", DIR, "h/dirlink", 0), &[PERM, NOTSUP]);
    is("link-slash", ln("h/file", DIR, "h/new/", 0), &[NOENT]);
    is("link-slash-file", ln("h/file", DIR, "h/second/", 0), &[NOTDIR]);
    is("link-slash-dir", ln("h/file", DIR, "h/sub/", 0), &[EXIST]);
    symlink("nothing", "h/dangling");
    is("link-dangling-symlink", ln("h/dangling", DIR, "h/link-of-link", 0), &[0]);
    is("link-follow", ln("h/dangling", DIR, "h/x", FOLLOW), &[INVAL, NOENT]);
    let sub = open(DIR, 0, "h/sub", DIRECTORY, 0, 0).unwrap();
    is("link-across-fds", ln("h/file", sub, "third", 0), &[0]);
    check("link-across-fds-there", stat("h/sub/third", 0).map(|s| s.ino) == Ok(a.ino), String::new());
    let rn = |a: &str, fd: i32, b: &str| unsafe { path_rename(DIR, a.as_ptr(), a.len() as i32, fd, b.as_ptr(), b.len() as i32) };
    is("rename-across-fds", rn("h/second", sub, "fourth"), &[0]);
    check("rename-across-fds-there", stat("h/sub/fourth", 0).is_ok() && stat("h/second", 0).is_err(), String::new());
    close(sub);
}

fn times_group() {
    let fd = open(DIR, 0, "t", CREAT, READ | WRITE, 0).unwrap();
    unsafe { fd_filestat_set_size(fd, 100); }
    let s = fstat(fd);
    let r = unsafe { fd_filestat_set_times(fd, 0, (s.mtim - 100) as i64, MTIM) };
    is("fd-times", r, &[0]);
    let t = fstat(fd);
    check("fd-times-mtim", t.mtim == s.mtim - 100 && t.atim == s.atim && t.size == 100,
          format!("{} {} / {} {}", t.mtim, t.atim, s.mtim, s.atim));
    is("fd-times-both-m", unsafe { fd_filestat_set_times(fd, 1, 2, MTIM | MTIM_NOW) }, &[INVAL]);
    is("fd-times-both-a", unsafe { fd_filestat_set_times(fd, 1, 2, ATIM | ATIM_NOW) }, &[INVAL]);
    check("fd-times-untouched", fstat(fd).mtim == t.mtim, String::new());
    let p = "t";
    is("path-times-both", unsafe { path_filestat_set_times(DIR, 0, p.as_ptr(), 1, 1, 2, MTIM | MTIM_NOW) }, &[INVAL]);
    is("path-times-now", unsafe { path_filestat_set_times(DIR, 0, p.as_ptr(), 1, 0, 0, ATIM_NOW | MTIM_NOW) }, &[0]);
    check("path-times-now-moved", fstat(fd).mtim > t.mtim, String::new());
    close(fd);
}

/// What only wsuper does (wasmtime refuses fd_fdstat_set_rights).
fn wsuper_group() {
    let fd = open(DIR, 0, "rights", CREAT, READ | WRITE | SEEK, 0).unwrap();
    let s = fdstat(fd);
    is("drop-rights", unsafe { wasi_set_rights(fd, s.base & !((READ | WRITE) as u64), 0) }, &[0]);
    is("read-dropped", err(read(fd, 1)), &[BADF, NOTCAPABLE]);
    is("write-dropped", err(write(fd, b"x")), &[BADF, NOTCAPABLE]);
    is("regrant", unsafe { wasi_set_rights(fd, s.base, 0) }, &[NOTCAPABLE]);
    close(fd);
    let d = open(DIR, 0, ".", DIRECTORY, 0, 0).unwrap();
    let ds = fdstat(d);
    check("dir-rights", ds.base == 0x7B7FE00, format!("{:#x}", ds.base));
    is("drop-dir-right", unsafe { wasi_set_rights(d, ds.base & !(1 << 9), ds.inheriting) }, &[0]);
    let p = "never";
    is("dropped-dir-right", unsafe { path_create_directory(d, p.as_ptr(), p.len() as i32) }, &[NOTCAPABLE]);
    close(d);
    is("symlink-climbs-out", symlink("../x", "climb"), &[PERM]);
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    #[link_name = "fd_fdstat_set_rights"]
    fn wasi_set_rights(fd: i32, base: u64, inheriting: u64) -> i32;
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let all = ["readdir", "rights", "flags", "paths", "symlink", "link", "times"];
    let groups: Vec<&str> = if args.is_empty() { all.to_vec() } else { args.iter().map(|s| s.as_str()).collect() };
    for g in groups {
        match g {
            "readdir" => readdir_group(),
            "rights" => rights_group(),
            "flags" => flags_group(),
            "paths" => paths_group(),
            "symlink" => symlink_group(),
            "link" => link_group(),
            "times" => times_group(),
            "wsuper" => wsuper_group(),
            _ => { println!("FAIL unknown group {}", g); unsafe { FAILURES += 1; } }
        }
    }
    std::process::exit(unsafe { FAILURES });
}
