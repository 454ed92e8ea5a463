;; Spin's interface, slow to start: its start function counts to 6*10^8 (about
;; a second or two), then every method answers 5.
(module
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $s (local $i i32)
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (i32.const 600000000)))
      (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l))))
  (start $s)
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.const 5))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
)
