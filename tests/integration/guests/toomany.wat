;; toomany: a guest passing more capabilities than one message carries (257;
;; abi.MAX_CAPS is 256).  See tests/unit/test_engine_handles.py.  Grant "peer".
;; Every method answers (v :Int32) with v below.
;;   method 0: call "peer" passing its handle N times, N the i32 at params byte
;;             16: v = the call's status
;;   method 1: results_set with 257 capabilities: v = its status (then the
;;             answer is set as usual)
(module
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (func $peer (result i32) (call $lookup (i32.const 100) (i32.const 4)))
  (func $fill (param $n i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 2)))
                   (call $peer))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
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
    (local $n i32)
    (drop (call $params_read (i32.const 0) (i32.const 2000)))
    (if (i32.eqz (local.get $method))
      (then (local.set $n (i32.load (i32.const 16)))
            (call $fill (local.get $n))
            (return (call $answer
              (call $call (call $peer) (i64.const 7) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const 4096) (local.get $n) (i32.const 200))))))
    (call $fill (i32.const 257))
    (call $answer (call $results_set (i32.const 8192) (i32.const 0) (i32.const 4096)
                                     (i32.const 257))))
)
