;; startcall: a start function (the wasm start section) that makes host calls
;; when the handle table it sees is not empty: a per_call instance's start
;; function must see its own (the grants), not the outer instance's, and its
;; memory, not the outer instance's (another store: wasmtime aborts the process).
;; See tests/unit/test_engine_native.py.
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func $s
    (if (i32.gt_s (call $object (i32.const 5)) (i32.const 1))
      (then (global.set $n (call $lookup (i32.const 0) (i32.const 4))))))
  (start $s)
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) (global.get $n)))
