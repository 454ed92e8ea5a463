@0xb8bb5311426129b8;

# tests/integration/guests/c/protect_server.c serves it: each case does one thing
# memory protection must stop (test_protect.py).
interface Probe {
  run @0 (case :Text) -> (result :Text);
}
