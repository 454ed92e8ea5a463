import os, pytest
from supervisor import endpoint, runtime


def test_the_audit_is_not_opened_through_a_second_hard_link(tmp_path):
    """Made after check and before up opens it, a second name of the audit file is
    refused where the supervisor opens it too (and a single name is written)."""
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    os.link(path, tmp_path / "other")
    with pytest.raises(endpoint.EndpointError, match="has 2 hard links"):
        runtime._Audit(str(path), "run").open()
    os.unlink(tmp_path / "other")
    audit = runtime._Audit(str(path), "run")
    audit.open()
    audit._write([{"event": "x", "time": 0.0}])
    audit.close()
    assert '"event":"x"' in path.read_text()
