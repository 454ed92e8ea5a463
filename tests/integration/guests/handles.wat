;; handles: what a guest's handles name after it gives one up, and what becomes
;; of the capabilities of a reply it never read.  See tests/unit/test_engine_handles.py.
;; Grants "peer" and "other".  Every method answers (v :Int32) with v below.
;;   method 0: release peer's handle, make an object: v = lookup("peer") afterwards
;;   method 1: release peer's handle, call "other" (its answer carries a capability)
;;             and read the reply: v = lookup("peer") afterwards
;;   method 2: call "peer", read its reply (whatever it was), call "peer" again:
;;             v = the first call's status
;;   method 3: call "peer" and never read the reply: v = its status
;;   method 4: call "peer"'s method N, N the i32 at params byte 16: v = its status
;;   method 5: answers a capability, and releases its handle before returning:
;;             "peer" (params byte 16 = 0) or the one "other"'s answer brings (1)
;;   method 6: call "other" and leave its reply unread, then call "peer" with params
;;             out of memory: it traps
;;   method 7: make an object, then v = reply_read's status
;;   method 8: call an object of its own (object(9)), read the reply (the reason):
;;             v = the call's status, the reason's length at 1000 and its bytes at 1008
;;   method 9: call "peer", read its reply, then read it again: v = the second
;;             reply_read's status
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "reply_read" (func $reply_read (param i32 i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (data (i32.const 110) "other")
  (func $peer (result i32) (call $lookup (i32.const 100) (i32.const 4)))
  (func $out (param $h i32) (result i32) (call $out_m (local.get $h) (i32.const 0)))
  (func $out_m (param $h i32) (param $m i32) (result i32)
    (call $call (local.get $h) (i64.const 7) (local.get $m)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 200)))
  (func $answer (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_s (local.get $v)))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))
    (i32.const 0))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (local $r i32)
    (if (i32.eqz (local.get $method))
      (then (drop (call $release (call $peer)))
            (drop (call $object (i32.const 9)))
            (return (call $answer (call $peer)))))
    (if (i32.eq (local.get $method) (i32.const 1))
      (then (drop (call $release (call $peer)))
            (drop (call $out (call $lookup (i32.const 110) (i32.const 5))))
            (drop (call $reply_read (i32.const 1000) (i32.const 3000)))
            (return (call $answer (call $peer)))))
    (if (i32.eq (local.get $method) (i32.const 2))
      (then (local.set $r (call $out (call $peer)))
            (drop (call $reply_read (i32.const 1000) (i32.const 3000)))
            (drop (call $out (call $peer)))
            (drop (call $reply_read (i32.const 1000) (i32.const 3000)))
            (return (call $answer (local.get $r)))))
    (if (i32.eq (local.get $method) (i32.const 4))
      (then (drop (call $params_read (i32.const 4000) (i32.const 5000)))
            (return (call $answer (call $out_m (call $peer) (i32.load (i32.const 4016)))))))
    (if (i32.eq (local.get $method) (i32.const 5))
      (then (drop (call $params_read (i32.const 4000) (i32.const 5000)))
            (local.set $r (call $peer))
            (if (i32.load (i32.const 4016))
              (then (drop (call $out (call $lookup (i32.const 110) (i32.const 5))))
                    (drop (call $reply_read (i32.const 1000) (i32.const 3000)))
                    (local.set $r (i32.load (i32.const 3000)))))
            (i32.store (i32.const 3100) (local.get $r))
            ;; (v :Int32) and a capability pointer to caps[0] after it
            (i32.store (i32.const 8192) (i32.const 0))
            (i32.store (i32.const 8196) (i32.const 3))
            (i64.store (i32.const 8200) (i64.const 0x0001000100000000))
            (i64.store (i32.const 8208) (i64.const 5))
            (i64.store (i32.const 8216) (i64.const 3))
            (drop (call $results_set (i32.const 8192) (i32.const 32) (i32.const 3100) (i32.const 1)))
            (return (call $release (local.get $r)))))
    (if (i32.eq (local.get $method) (i32.const 6))
      (then (drop (call $out (call $lookup (i32.const 110) (i32.const 5))))
            (return (call $call (call $peer) (i64.const 7) (i32.const 0) (i32.const -16)
                          (i32.const 24) (i32.const 0) (i32.const 0) (i32.const 200)))))
    (if (i32.eq (local.get $method) (i32.const 7))
      (then (drop (call $object (i32.const 9)))
            (return (call $answer (call $reply_read (i32.const 1000) (i32.const 3000))))))
    (if (i32.eq (local.get $method) (i32.const 8))
      (then (local.set $r (call $out (call $object (i32.const 9))))
            (i32.store (i32.const 1000) (i32.load (i32.const 200)))
            (drop (call $reply_read (i32.const 1008) (i32.const 3000)))
            (return (call $answer (local.get $r)))))
    (if (i32.eq (local.get $method) (i32.const 9))
      (then (drop (call $out (call $peer)))
            (drop (call $reply_read (i32.const 1000) (i32.const 3000)))
            (return (call $answer (call $reply_read (i32.const 1000) (i32.const 3000))))))
    (call $answer (call $out (call $peer))))
)
