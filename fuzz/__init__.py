"""Fuzz harnesses for wsuper's trust boundaries (not part of the installed package).

protocol.py  the wire and protocol layer: mutated RPC messages into a
             Connection, the hand decoder against pycapnp, the single-segment
             copier against pycapnp.  `python -m fuzz.protocol --help`.
seeds.py     its seed messages and contents, and the connection they meet.
"""
