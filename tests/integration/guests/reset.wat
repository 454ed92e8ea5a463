;; A Calc whose add(a, b) leaves state behind, or looks for state left behind,
;; chosen by `a` (tests/integration/test_per_call.py).  With instance = "per_call"
;; every call must start from the grants and nothing else.
;;   1: calls calc.add and leaves its reply unread     2: reply_read (E_STATE = -8)
;;   3: writes "half" to stdout, no newline            4: writes "end\n" to stdout
;;   5: gets a Counter from calc, answers its handle   6: calls Counter.inc on handle b
;;   7: releases its calc grant's handle               8: calls calc.add through the grant
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "calc")
  (data (i32.const 200) "half")
  (data (i32.const 210) "end\n")

  (func $reply_int (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_u (local.get $v)))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))

  ;; a one-word struct message at 400 holding $x (and $y), then the call
  (func $call1 (param $h i32) (param $iface i64) (param $method i32) (param $x i32) (param $y i32)
        (result i32)
    (i32.store (i32.const 400) (i32.const 0))
    (i32.store (i32.const 404) (i32.const 2))
    (i64.store (i32.const 408) (i64.const 0x0000000100000000))
    (i32.store (i32.const 416) (local.get $x))
    (i32.store (i32.const 420) (local.get $y))
    (call $call (local.get $h) (local.get $iface) (local.get $method)
          (i32.const 400) (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 500)))

  (func $write (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 300) (local.get $ptr))
    (i32.store (i32.const 304) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 320)))
    (call $reply_int (i32.const 0)))

  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $a i32) (local $b i32) (local $h i32)
    (memory.fill (i32.const 0) (i32.const 0) (i32.const 64))
    (drop (call $params_read (i32.const 0) (i32.const 4096)))
    (local.set $a (i32.load (i32.const 16)))
    (local.set $b (i32.load (i32.const 20)))
    (local.set $h (call $lookup (i32.const 100) (i32.const 4)))
    (if (i32.eq (local.get $a) (i32.const 1))
      (then (return (call $reply_int
        (call $call1 (local.get $h) (i64.const 0xc0ffee0000000001) (i32.const 0)
              (i32.const 20) (i32.const 22))))))
    (if (i32.eq (local.get $a) (i32.const 2))
      (then (return (call $reply_int (call $reply_read (i32.const 600) (i32.const 5000))))))
    (if (i32.eq (local.get $a) (i32.const 3)) (then (return (call $write (i32.const 200) (i32.const 4)))))
    (if (i32.eq (local.get $a) (i32.const 4)) (then (return (call $write (i32.const 210) (i32.const 4)))))
    (if (i32.eq (local.get $a) (i32.const 5))
      (then (drop (call $call (local.get $h) (i64.const 0xc0ffee0000000001) (i32.const 1)
                        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 500)))
            (drop (call $reply_read (i32.const 600) (i32.const 5000)))
            (return (call $reply_int (i32.load (i32.const 5000))))))
    (if (i32.eq (local.get $a) (i32.const 6))
      (then (return (call $reply_int
        (call $call1 (local.get $b) (i64.const 0xc0ffee0000000002) (i32.const 0)
              (i32.const 1) (i32.const 0))))))
    (if (i32.eq (local.get $a) (i32.const 7))
      (then (return (call $reply_int (call $release (local.get $h))))))
    (if (i32.eq (local.get $a) (i32.const 8))
      (then (return (call $reply_int
        (call $call1 (local.get $h) (i64.const 0xc0ffee0000000001) (i32.const 0)
              (i32.const 1) (i32.const 2))))))
    (call $reply_int (i32.const -100)))
)
