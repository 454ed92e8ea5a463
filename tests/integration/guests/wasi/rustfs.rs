// A Rust program for wasm32-wasi using std::fs, std::env and the clock
// (test_wasi.py builds it with Debian's rustc and runs it on its grants).
use std::env;
use std::fs;
use std::io::Write;

fn main() {
    let args: Vec<String> = env::args().collect();
    println!("args {:?}", &args[1..]);
    println!("MODE={}", env::var("MODE").unwrap_or_default());
    let mut f = fs::OpenOptions::new().create(true).append(true).open("/data/rust.txt").unwrap();
    writeln!(f, "written by rust").unwrap();
    println!("read back: {:?}", fs::read_to_string("/data/rust.txt").unwrap());
    let mut names: Vec<String> = fs::read_dir("/data").unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    println!("dir: {:?}", names);
    println!("outside: {}", fs::read_to_string("/etc/passwd").is_err());
    // links: one the host made inside the grant, one out of it, and a hard link
    println!("read_link: {:?}", fs::read_link("/data/inside").map(|p| p.display().to_string()));
    println!("through it: {:?}", fs::read_to_string("/data/inside").ok());
    println!("is symlink: {}", fs::symlink_metadata("/data/inside").map(|m| m.file_type().is_symlink()).unwrap_or(false));
    println!("escape: {}", fs::read_to_string("/data/escape").is_err());
    fs::hard_link("/data/rust.txt", "/data/tree/again.txt").unwrap();
    println!("hard link: {:?}", fs::read_to_string("/data/tree/again.txt").ok());
    fs::remove_dir_all("/data/tree").unwrap();
    println!("tree gone: {}", fs::metadata("/data/tree").is_err());
    println!("time ok: {}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).is_ok());
    std::process::exit(4);
}
