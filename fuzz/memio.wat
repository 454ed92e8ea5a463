;; memio: calls params_read, results_set and reply_read with whatever arguments the test
;; wrote at byte 120000 (A, B, C, D as i32), so that a test can hand them any
;; pointer, length, handle array and message.  See fuzz/hostmem.py.  Method 5 calls
;; wsuper.call with the arguments at 120016.. (fuzz/callout.py).
(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (i32.const 120000) (i32.shl (local.get $i) (i32.const 2)))))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $r i32)
    ;; 0: results_set(A, B, C, D)
    (if (i32.eqz (local.get $method))
      (then (return (call $results_set (call $arg (i32.const 0)) (call $arg (i32.const 1)) (call $arg (i32.const 2)) (call $arg (i32.const 3))))))
    ;; 1: params_read(A, B); then its params and handles back as the results
    (if (i32.eq (local.get $method) (i32.const 1))
      (then
        (local.set $r (call $params_read (call $arg (i32.const 0)) (call $arg (i32.const 1))))
        (if (local.get $r) (then (return (local.get $r))))
        (return (call $results_set (call $arg (i32.const 0)) (local.get $len) (call $arg (i32.const 1))
                                   (local.get $ncaps)))))
    ;; 2: results_set(A, B, C, D) twice: the second one's status
    (if (i32.eq (local.get $method) (i32.const 2))
      (then
        (drop (call $results_set (call $arg (i32.const 0)) (call $arg (i32.const 1)) (call $arg (i32.const 2)) (call $arg (i32.const 3))))
        (return (call $results_set (call $arg (i32.const 0)) (call $arg (i32.const 1)) (call $arg (i32.const 2)) (call $arg (i32.const 3))))))
    ;; 4: reply_read(A, B): the reply the test left pending
    (if (i32.eq (local.get $method) (i32.const 4))
      (then (return (call $reply_read (call $arg (i32.const 0)) (call $arg (i32.const 1))))))
    ;; 5: call(handle, interface (i64), method, params, length, caps, count, out) with
    ;; the arguments at 4..12 (the interface at 5 and 6), its status stored at slot 13;
    ;; then, if slot 14 is not 0 and the call returned 0, reply_read(slot 14, slot 15)
    ;; with its status at slot 16; the call's status is the dispatch's
    (if (i32.eq (local.get $method) (i32.const 5))
      (then
        (local.set $r (call $call (call $arg (i32.const 4)) (i64.load (i32.const 120020))
                                  (call $arg (i32.const 7)) (call $arg (i32.const 8))
                                  (call $arg (i32.const 9)) (call $arg (i32.const 10))
                                  (call $arg (i32.const 11)) (call $arg (i32.const 12))))
        (i32.store (i32.const 120052) (local.get $r))
        (if (i32.and (i32.eqz (local.get $r)) (i32.ne (call $arg (i32.const 14)) (i32.const 0)))
          (then (i32.store (i32.const 120064)
                           (call $reply_read (call $arg (i32.const 14)) (call $arg (i32.const 15))))))
        (return (local.get $r))))
    ;; 3: a new object's handle at C, then results_set(A, B, C, D)
    (i32.store (call $arg (i32.const 2)) (call $object (i32.const 1)))
    (call $results_set (call $arg (i32.const 0)) (call $arg (i32.const 1)) (call $arg (i32.const 2)) (call $arg (i32.const 3))))
)
