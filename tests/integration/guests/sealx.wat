;; sealx: a compartment handing its own main object on.  See
;; tests/integration/test_sealed.py.  Interfaces: Calc (0xc0ffee0000000001) and
;; Sealed (0xd5a1ed0000000001, no capability anywhere).
;;   Calc, no capability (a): calls its grant "s" (Sealed.add): v = its answer or status
;;   Calc with one (t): calls that capability (Sealed.add) with an object of its own
;;   Sealed with capabilities (s's main object): v = 1000 + how many it brought
;;   Sealed without (s): calls its grant "t" (Calc.sumTo) with object(0), itself
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "s")
  (data (i32.const 110) "t")
  (func $answer (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_s (local.get $v)))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0))
  ;; call handle h with iface, caps at 3000 (n), then answer with reply's value or status
  (func $relay (param $h i32) (param $iface i64) (param $n i32) (result i32)
    (local $r i32)
    (local.set $r (call $call (local.get $h) (local.get $iface) (i32.const 0)
                        (i32.const 0) (i32.const 0) (i32.const 3000) (local.get $n)
                        (i32.const 200)))
    (if (local.get $r) (then (return (call $answer (local.get $r)))))
    (drop (call $reply_read (i32.const 1000) (i32.const 3100)))
    (call $answer (i32.load (i32.const 1016))))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i64.eq (local.get $iface) (i64.const 0xc0ffee0000000001))
      (then
        (if (i32.eqz (local.get $ncaps))
          (then  ;; a: call s's main object plainly
            (return (call $relay (call $lookup (i32.const 100) (i32.const 1))
                          (i64.const 0xd5a1ed0000000001) (i32.const 0)))))
        ;; t: call the handle it was passed with an object of its own
        (drop (call $params_read (i32.const 4000) (i32.const 5000)))
        (i32.store (i32.const 3000) (call $object (i32.const 1)))
        (return (call $relay (i32.load (i32.const 5000))
                      (i64.const 0xd5a1ed0000000001) (i32.const 1)))))
    (if (local.get $ncaps)
      (then (return (call $answer (i32.add (i32.const 1000) (local.get $ncaps))))))
    ;; s: hand its own main object to t
    (i32.store (i32.const 3000) (call $object (i32.const 0)))
    (call $relay (call $lookup (i32.const 110) (i32.const 1))
          (i64.const 0xc0ffee0000000001) (i32.const 1))))
