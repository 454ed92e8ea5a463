;; passer: serves Calc.add by calling its grant "secret" (Sealed.add, id
;; 0xd5a1ed0000000001, in tests/integration/test_sealed.py) with
;; an object of its own in the call's capability table, whatever secret's schema
;; says, and answers (sum) = secret's answer, or the call's error code.
;; secret (the same module) answers any call with (sum) = the number of
;; capabilities the call brought.  See tests/integration/test_sealed.py.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "secret")
  (func $answer (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_s (local.get $v)))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $r i32)
    ;; Calc.add: pass an object of ours to secret
    (if (i64.eq (local.get $iface) (i64.const 0xc0ffee0000000001))
      (then
        (i32.store (i32.const 3000) (call $object (i32.const 1)))
        (local.set $r (call $call (call $lookup (i32.const 100) (i32.const 6))
                            (i64.const 0xd5a1ed0000000001) (i32.const 0)
                            (i32.const 0) (i32.const 0) (i32.const 3000) (i32.const 1)
                            (i32.const 200)))
        (if (local.get $r) (then (return (call $answer (local.get $r)))))
        (drop (call $reply_read (i32.const 1000) (i32.const 3100)))
        (return (call $answer (i32.load (i32.const 1016))))))
    (call $answer (local.get $ncaps))))
