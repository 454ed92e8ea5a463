;; relaycap: serves any call by making the same call (interface, method, params and
;; capabilities) on its "next" grant, and answers with next's results and their
;; capabilities (or fails with next's reason): an external client then holds what
;; comes out of next's membrane, and calls it directly.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "fail" (func $fail (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 100) "next")
  ;; 1000: call's out (length, handles); 2000: param handles; 3000: reply handles;
  ;; 4096: params (up to 60 KiB); 70000: the reply
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i32.or (i32.gt_u (local.get $len) (i32.const 61440))
                (i32.gt_u (local.get $ncaps) (i32.const 16)))
      (then (return (i32.const 1))))
    (drop (call $params_read (i32.const 4096) (i32.const 2000)))
    (if (i32.lt_s (call $call (call $lookup (i32.const 100) (i32.const 4))
                              (local.get $iface) (local.get $method)
                              (i32.const 4096) (local.get $len) (i32.const 2000)
                              (local.get $ncaps) (i32.const 1000))
                  (i32.const 0))
      (then
        (drop (call $reply_read (i32.const 70000) (i32.const 3000)))
        (drop (call $fail (i32.const 70000) (i32.load (i32.const 1000))))
        (return (i32.const 0))))
    (drop (call $reply_read (i32.const 70000) (i32.const 3000)))
    (drop (call $results_set (i32.const 70000) (i32.load (i32.const 1000))
                             (i32.const 3000) (i32.load (i32.const 1004))))
    (i32.const 0))
)
