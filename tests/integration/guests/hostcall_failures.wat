(module
  ;; A Calc whose add() makes host calls that fail (test_probes.py, hostcalls): a
  ;; WASI fd_close of a descriptor it does not have (EBADF), a lookup of a grant it
  ;; does not hold (E_NOTFOUND), and on its second call a lookup of memory it does
  ;; not have, which traps; then it answers with the number of calls it has served.
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 100) "nothing")
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (drop (call $fd_close (i32.const 99)))
    (drop (call $lookup (i32.const 100) (i32.const 7)))
    (if (i32.eq (global.get $calls) (i32.const 2))
      (then (drop (call $lookup (i32.const -16) (i32.const 100)))))
    (i32.store (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 2))
    (i64.store (i32.const 8) (i64.const 0x0000000100000000))
    (i64.store (i32.const 16) (i64.extend_i32_u (global.get $calls)))
    (drop (call $results_set (i32.const 0) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
