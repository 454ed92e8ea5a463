;; outside: params_read and results_set from guest code that is not a dispatch
;; (_initialize, _start) while a call into the guest waits in wsuper.call, which
;; must say E_STATE: the waiting call's params and results are not theirs.  See
;; tests/unit/test_engine_native.py.
;;   method 0: calls out (through the grant "peer") and returns its status
;;   method 1: returns as its results what the last _initialize or _start read
;;             with params_read, if that succeeded
;; Statuses outside a dispatch: params_read's at 4000, results_set's at 4004.
(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "peer")
  (data (i32.const 2000) "\00\00\00\00\02\00\00\00\00\00\00\00\01\00\00\00\2a\00\00\00\00\00\00\00")
  (func $outside
    (i32.store (i32.const 4000) (call $params_read (i32.const 1000) (i32.const 3000)))
    (i32.store (i32.const 4004) (call $results_set (i32.const 2000) (i32.const 24) (i32.const 0) (i32.const 0))))
  (func (export "_initialize") (call $outside))
  (func (export "_start") (call $outside))
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i32.eqz (local.get $method))
      (then (return (call $call (call $lookup (i32.const 100) (i32.const 4)) (i64.const 7) (i32.const 0)
                              (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 200)))))
    (if (i32.eqz (i32.load (i32.const 4000)))
      (then (return (call $results_set (i32.const 1000)
                                       (i32.add (i32.const 8) (i32.shl (i32.load (i32.const 1004)) (i32.const 3)))
                                       (i32.const 0) (i32.const 0)))))
    (i32.const 0))
)
