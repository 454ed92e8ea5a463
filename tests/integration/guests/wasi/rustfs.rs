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
    println!("time ok: {}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).is_ok());
    std::process::exit(4);
}
