;; A program that runs for ever (_start sleeps 0.2 s at a time, never returning),
;; exporting Spin: spin (method 0) calls its "next" grant's ping (1) first, then
;; answers 7; every other method answers 7 at once.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "next")
  (func (export "_start")
    (loop $l
      (i64.store (i32.const 1024) (i64.const 0))
      (i32.store (i32.const 1040) (i32.const 1))
      (i64.store (i32.const 1048) (i64.const 200000000))
      (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 3000)))
      (br $l)))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i32.eq (local.get $method) (i32.const 0)) (then
      (drop (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 0xc0ffee00000000f1) (i32.const 1)
                  (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000)))))
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.const 7))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
)
