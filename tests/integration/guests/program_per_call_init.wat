;; A per_call program that serves Spin: _start runs for ever (sleeps of 0.2 s,
;; its subscription in a data segment, so every instance's memory has it);
;; _initialize of a call's instance (not the one at start: object(0) is E_STATE
;; there) calls its "next" grant's ping (1) first; every method answers 7.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "next")
  ;; subscription: userdata 0, tag 0 (clock), clock id 1 (monotonic), 0.2 s relative
  (data (i32.const 1040) "\01\00\00\00\00\00\00\00\00\c2\eb\0b\00\00\00\00")
  (func (export "_start")
    (loop $l
      (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 3000)))
      (br $l)))
  (func (export "_initialize")
    (if (i32.gt_s (call $object (i32.const 0)) (i32.const 0)) (then
      (drop (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 0xc0ffee00000000f1) (i32.const 1)
                  (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000))))))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.const 7))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
)
