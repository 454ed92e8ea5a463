(module
  ;; A Calc that answers add() with the number of calls its instance has served:
  ;; 1, 2, 3, ... when the instance is shared; always 1 with instance = "per_call".
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))

  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 2))
    (i64.store (i32.const 8) (i64.const 0x0000000100000000))
    (i64.store (i32.const 16) (i64.extend_i32_u (global.get $calls)))
    (drop (call $results_set (i32.const 0) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
