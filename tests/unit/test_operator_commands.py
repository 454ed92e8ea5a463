"""The operator's commands (supervisor/cli.py) against a system that answers but
does not do what it said, without processes: the admin socket faked."""
from supervisor import cli, endpoint


def test_stop_of_a_system_that_says_it_stops_but_does_not_is_an_error(tmp_path, monkeypatch,
                                                                       capsys):
    """A review of the operator's commands: `wsuper stop` of a system that answered
    "stopping" and was still running when the wait ended printed "it has not
    stopped yet" on stdout and exited 0, as if it had stopped (`wsuper stop S &&
    wsuper up S` went on and found it running)."""
    path = tmp_path / "system.toml"
    path.write_text('[compartments.app]\nmodule = "app.wat"\n')
    monkeypatch.setattr(cli, "STOP_WAIT", 0.2)
    monkeypatch.setattr(endpoint, "is_running", lambda _p: True)
    monkeypatch.setattr(endpoint, "request", lambda _p, body, **kw: {
        "ok": True, "text": "stopping", "pid": 4242})
    assert cli.main(["stop", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "has not stopped within 0.2 s" in err and "pid 4242" in err
    running = iter([True, True, False])
    monkeypatch.setattr(endpoint, "is_running", lambda _p: next(running))
    assert cli.main(["stop", str(path)]) == 0
    assert capsys.readouterr().out == f"wsuper: stopped {path}\n"
