;; Spin's interface, with a sleep for a loop: spin (method 0) asks WASI's
;; poll_oneoff for a relative sleep of 2^63-1 ns (no grant needed, and no fuel
;; spent), then answers 9; ping (1) answers 7 at once.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $reply_int (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_u (local.get $v)))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i32.eqz (local.get $method)) (then
      ;; one subscription at 1024: userdata 0, a clock (tag 0), monotonic, relative
      (i64.store (i32.const 1024) (i64.const 0))
      (i32.store8 (i32.const 1032) (i32.const 0))
      (i32.store (i32.const 1040) (i32.const 1))
      (i64.store (i32.const 1048) (i64.const 0x7fffffffffffffff))
      (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 3000)))
      (return (call $reply_int (i32.const 9)))))
    (call $reply_int (i32.const 7)))
)
