"""The interpreter's opcodes, counted by function: a measure of Python's work that
a noisy, shared machine does not move, unlike CPU time (benchmarks/hostpath.py
--opcodes, benchmarks/callee_opcodes.py)."""
import collections
import os


def tracer(counts: collections.Counter):
    """A `sys.settrace` function that adds each opcode run from then on to `counts`,
    under "file:function" of the code it belongs to."""
    def local(frame, event, arg):
        if event == "opcode":
            code = frame.f_code
            counts[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        return local

    def trace(frame, event, arg):
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return local
    return trace
