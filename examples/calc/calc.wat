;; calc: serves Calc (add, newCounter, sumTo) and the Counter objects it hands out.
;; Messages follow docs/guest-abi.md: params arrive as a canonical single-segment
;; Cap'n Proto message (8-byte segment table, root pointer at byte 8, root struct
;; from byte 16); results are written in the same layout.
(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (import "wsuper" "call" (func $call (param i32 i64 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wsuper" "release" (func $release (param i32) (result i32)))
  (import "wsuper" "object" (func $object (param i32) (result i32)))
  (import "wsuper" "fail" (func $fail (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0..4095 params, 4096..4159 param handles, 8192 results, 8300 result handle,
  ;; 8448 call out, 8464 call params, 16384.. counter values
  (global $next_tag (mut i32) (i32.const 1))
  (data (i32.const 12000) "unknown method")

  (func $reply_int (param $v i32) (result i32)
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0000000100000000))
    (i64.store (i32.const 8208) (i64.extend_i32_u (local.get $v)))
    (call $results_set (i32.const 8192) (i32.const 24) (i32.const 0) (i32.const 0)))

  ;; Int32 field $i of the params root struct's first data word, or its default (0)
  ;; when the struct a client sent has no data section: a null params pointer (what
  ;; Cap'n Proto clients send when no field is set: Rust's capnp-rpc does) or a
  ;; struct from an older schema.  Reading the bytes anyway gave the previous call's
  ;; params (another client's) back as this one's.
  (func $arg (param $i i32) (result i32)
    (if (result i32) (i32.eqz (i32.load16_u (i32.const 12)))
      (then (i32.const 0))
      (else (i32.load (i32.add (i32.const 16) (i32.shl (local.get $i) (i32.const 2)))))))

  ;; byte offset of pointer field $i of the params root struct
  (func $ptr_field (param $i i32) (result i32)
    (i32.add (i32.add (i32.const 16)
                      (i32.shl (i32.load16_u (i32.const 12)) (i32.const 3)))
             (i32.shl (local.get $i) (i32.const 3))))

  (func $add (result i32)
    (call $reply_int (i32.add (call $arg (i32.const 0)) (call $arg (i32.const 1)))))

  (func $new_counter (result i32)
    (local $tag i32)
    (local.set $tag (global.get $next_tag))
    (if (i32.ge_u (local.get $tag) (i32.const 1000)) (then (return (i32.const 3))))
    (global.set $next_tag (i32.add (local.get $tag) (i32.const 1)))
    (i32.store (i32.const 8300) (call $object (local.get $tag)))
    ;; results: struct with 0 data words, 1 pointer = capability #0
    (i32.store (i32.const 8192) (i32.const 0))
    (i32.store (i32.const 8196) (i32.const 2))
    (i64.store (i32.const 8200) (i64.const 0x0001000000000000))
    (i64.store (i32.const 8208) (i64.const 3))
    (drop (call $results_set (i32.const 8192) (i32.const 24) (i32.const 8300) (i32.const 1)))
    (drop (call $release (i32.load (i32.const 8300))))
    (i32.const 0))

  (func $inc (param $tag i32) (result i32)
    (local $addr i32)
    (local.set $addr (i32.add (i32.const 16384) (i32.shl (local.get $tag) (i32.const 2))))
    (i32.store (local.get $addr)
               (i32.add (i32.load (local.get $addr)) (call $arg (i32.const 0))))
    (call $reply_int (i32.load (local.get $addr))))

  (func $sum_to (param $ncaps i32) (result i32)
    (local $n i32) (local $i i32) (local $partial i32) (local $p i32) (local $h i32)
    (local.set $n (call $arg (i32.const 0)))
    (if (i32.gt_s (local.get $n) (i32.const 1000)) (then (local.set $n (i32.const 1000))))
    ;; the observer: a capability pointer (low word 3) whose high word indexes the caps
    (if (i32.eqz (i32.load16_u (i32.const 14))) (then (return (i32.const 4))))
    (local.set $p (call $ptr_field (i32.const 0)))
    (if (i32.ne (i32.load (local.get $p)) (i32.const 3)) (then (return (i32.const 4))))
    (if (i32.ge_u (i32.load offset=4 (local.get $p)) (local.get $ncaps)) (then (return (i32.const 4))))
    (local.set $h (i32.load (i32.add (i32.const 4096)
                                     (i32.shl (i32.load offset=4 (local.get $p)) (i32.const 2)))))
    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.gt_s (local.get $i) (local.get $n)))
        (local.set $partial (i32.add (local.get $partial) (local.get $i)))
        (i32.store (i32.const 8464) (i32.const 0))
        (i32.store (i32.const 8468) (i32.const 2))
        (i64.store (i32.const 8472) (i64.const 0x0000000100000000))
        (i32.store (i32.const 8480) (local.get $i))
        (i32.store (i32.const 8484) (local.get $partial))
        (if (i32.lt_s (call $call (local.get $h) (i64.const 0xc0ffee0000000003) (i32.const 0)
                                  (i32.const 8464) (i32.const 24) (i32.const 0) (i32.const 0)
                                  (i32.const 8448))
                      (i32.const 0))
          (then (drop (call $release (local.get $h))) (return (i32.const 5))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (drop (call $release (local.get $h)))
    (call $reply_int (local.get $partial)))

  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32) (param $ncaps i32)
        (result i32)
    (if (i32.or (i32.gt_u (local.get $len) (i32.const 4096))
                (i32.gt_u (local.get $ncaps) (i32.const 16)))
      (then (return (i32.const 1))))
    (i64.store (i32.const 8) (i64.const 0))    ;; no root struct unless params_read writes one
    (drop (call $params_read (i32.const 0) (i32.const 4096)))
    (if (i32.and (i32.eqz (local.get $obj))
                 (i64.eq (local.get $iface) (i64.const 0xc0ffee0000000001)))
      (then
        (if (i32.eq (local.get $method) (i32.const 0)) (then (return (call $add))))
        (if (i32.eq (local.get $method) (i32.const 1)) (then (return (call $new_counter))))
        (if (i32.eq (local.get $method) (i32.const 2)) (then (return (call $sum_to (local.get $ncaps)))))))
    (if (i32.and (i32.and (i32.gt_u (local.get $obj) (i32.const 0))
                          (i32.lt_u (local.get $obj) (global.get $next_tag)))
                 (i64.eq (local.get $iface) (i64.const 0xc0ffee0000000002)))
      (then (if (i32.eqz (local.get $method)) (then (return (call $inc (local.get $obj)))))))
    ;; a method (or interface) it does not have: -5, E_UNIMPLEMENTED, the exception
    ;; Cap'n Proto clients fall back on (a newer schema's method), as generated
    ;; skeletons answer
    (drop (call $fail (i32.const 12000) (i32.const 14)))
    (i32.const -5))
)
