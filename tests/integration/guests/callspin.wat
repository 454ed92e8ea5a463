;; callspin: spin (0) calls its "next" grant's spin (method 0 of Spin) once,
;; whatever that answers, then loops for ever, a function call each time; every
;; other method answers 7.  With spin.wat as "next", its call waits there until
;; it is cancelled.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "next")
  (func $step (param $i i32) (result i32) (i32.add (local.get $i) (i32.const 1)))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $i i32)
    (if (i32.eqz (local.get $method))
      (then
        (drop (call $call (call $lookup (i32.const 100) (i32.const 4))
                    (i64.const 0xc0ffee00000000f1) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const 1000)))
        (loop $forever (local.set $i (call $step (local.get $i))) (br $forever))))
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.const 7))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
)
