;; Spin's interface: spin (method 0) calls its "next" grant's ping for ever,
;; ignoring the answers (a few instructions a call: fuel_per_call lasts hours);
;; ping (1) answers 7 at once.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "next")
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $h i32)
    (if (i32.eq (local.get $method) (i32.const 1)) (then
      (i32.store (i32.const 8192) (i32.const 0))
      (i32.store (i32.const 8196) (i32.const 2))
      (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
      (i64.store (i32.const 8208) (i64.const 7))
      (return (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))))
    (local.set $h (call $lookup (i32.const 100) (i32.const 4)))
    (loop $l
      (drop (call $call (local.get $h) (i64.const 0xc0ffee00000000f1) (i32.const 1)
                  (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000)))
      (br $l))
    (i32.const 0))
)
