(module
  ;; A Calc whose add() answers with what the calls before it left in its memory,
  ;; a bit each, then leaves all of it for the next call:
  ;;   1  the secret at 1024            2  the data segment's byte at 2048 changed
  ;;   4  memory larger than 1 page     8  the secret at the start of a grown page
  ;; A shared instance answers 0, then 15; a fresh instance (instance = "per_call",
  ;; pooled or not) must answer 0 every time.
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 2048) "\2a")
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32)
    (local $seen i64) (local $page i32)
    (if (i64.eq (i64.load (i32.const 1024)) (i64.const 0x5ec7e75ec7e7))
      (then (local.set $seen (i64.or (local.get $seen) (i64.const 1)))))
    (if (i32.ne (i32.load8_u (i32.const 2048)) (i32.const 42))
      (then (local.set $seen (i64.or (local.get $seen) (i64.const 2)))))
    (if (i32.gt_u (memory.size) (i32.const 1))
      (then
        (local.set $seen (i64.or (local.get $seen) (i64.const 4)))
        (if (i64.eq (i64.load (i32.const 65536)) (i64.const 0x5ec7e75ec7e7))
          (then (local.set $seen (i64.or (local.get $seen) (i64.const 8)))))))
    ;; what this call leaves behind
    (i64.store (i32.const 1024) (i64.const 0x5ec7e75ec7e7))
    (i32.store8 (i32.const 2048) (i32.const 7))
    (local.set $page (memory.grow (i32.const 1)))
    (if (i32.ge_s (local.get $page) (i32.const 0))
      (then (i64.store (i32.mul (local.get $page) (i32.const 65536)) (i64.const 0x5ec7e75ec7e7))))
    (i32.store (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 2))
    (i64.store (i32.const 8) (i64.const 0x0000000100000000))
    (i64.store (i32.const 16) (local.get $seen))
    (drop (call $results_set (i32.const 0) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0)))
