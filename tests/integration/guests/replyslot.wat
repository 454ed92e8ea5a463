;; replyslot: a reply left pending while the guest waits in something other than
;; wsuper.call (a WASI write to its log, which serves calls meanwhile), and a call
;; served nested then.  See tests/unit/test_engine_handles.py.
;; Grants "peer" (answers (v :Int32)) and "stdout" (a log).
;;   method 0: call "peer", write a line to stdout, then read the reply:
;;             v = the reply's v (or reply_read's status if it fails)
;;   method 1: call "peer" and never read the reply: v = its status
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (data (i32.const 120) "a line\n")
  (func $out (result i32)
    (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 7) (i32.const 0)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 200)))
  (func $answer (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_s (local.get $v)))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0))
  (func $line
    (i32.store (i32.const 300) (i32.const 120))
    (i32.store (i32.const 304) (i32.const 7))
    (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 308))))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $r i32)
    (if (i32.eq (local.get $method) (i32.const 1))
      (then (return (call $answer (call $out)))))
    (local.set $r (call $out))
    (if (local.get $r) (then (return (call $answer (local.get $r)))))
    (call $line)
    (local.set $r (call $reply_read (i32.const 1000) (i32.const 3000)))
    (if (local.get $r) (then (return (call $answer (local.get $r)))))
    (call $answer (i32.load (i32.const 1016)))))
