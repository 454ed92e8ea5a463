;; selfer: a Calc whose newCounter (method 1) answers with its own main object
;; (wsuper.object(0)), and whose other methods answer (sum) = a + b + 1000 x the
;; calls this incarnation has served (this one included): which incarnation
;; answered, and how many calls reached it.
(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $served (mut i32) (i32.const 0))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i32.or (i32.gt_u (local.get $len) (i32.const 4096))
                (i32.gt_u (local.get $ncaps) (i32.const 16)))
      (then (return (i32.const 1))))
    (i64.store (i32.const 8) (i64.const 0))      ;; no root struct unless params_read writes one
    (i64.store (i32.const 16) (i64.const 0))
    (drop (call $params_read (i32.const 0) (i32.const 4096)))
    (global.set $served (i32.add (global.get $served) (i32.const 1)))
    (if (i32.eq (local.get $method) (i32.const 1))
      (then
        (i32.store (i32.const 8300) (call $object (i32.const 0)))
        (i32.store (i32.const 8192) (i32.const 0))
        (i32.store (i32.const 8196) (i32.const 2))
        (i64.store (i32.const 8200) (i64.const 0x0001000000000000))
        (i64.store (i32.const 8208) (i64.const 3))
        (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 8300) (i32.const 1)))
        (drop (call $release (i32.load (i32.const 8300))))
        (return (i32.const 0))))
    ;; a + b, when the root struct has a data section (else 0)
    (if (i32.eqz (i32.load16_u (i32.const 12)))
      (then (i64.store (i32.const 16) (i64.const 0))))
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_u
       (i32.add (i32.add (i32.load (i32.const 16)) (i32.load (i32.const 20)))
                (i32.mul (global.get $served) (i32.const 1000)))))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0))
)
