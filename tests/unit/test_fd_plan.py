"""How the supervisor shares out its descriptor limit (runtime.fd_plan)."""
import pytest

from supervisor import runtime


@pytest.mark.parametrize("limit,compartments,max_connections", [
    (300, 50, 32), (256, 50, 32), (1024, 190, 32), (400, 2, 100000), (200, 2, 1000),
    (64, 2, 32), (1 << 20, 500, 32)])
def test_the_host_files_keep_one_descriptor_for_each_compartment(limit, compartments,
                                                                 max_connections):
    """The connections' share had a floor of 64 (or max_connections), and the host
    files' budget came out below one for each compartment (below zero: 50
    compartments under 256 descriptors had -168, every directory grant refused)."""
    external, budget = runtime.fd_plan(limit, compartments, max_connections, 30)
    assert 1 <= external <= max_connections
    assert budget >= compartments


def test_what_the_connections_had_before_is_unchanged_where_there_is_room():
    assert runtime.fd_plan(400, 2, 100000, 30) == (164, 164)
    assert runtime.fd_plan(200, 2, 1000, 30) == (64, 64)
    assert runtime.fd_plan(1 << 20, 3, 32, 30)[0] == 32
    # 64 connections where half is fewer (policy-reference.md), while that leaves
    # the host files one for each compartment
    assert runtime.fd_plan(190, 2, 1000, 30) == (64, 54)
    assert runtime.fd_plan(320, 50, 100, 30) == (6, 50)


@pytest.mark.parametrize("limit", [64, 128, 200, 245])
def test_a_limit_that_cannot_hold_the_engines_is_refused_naming_it(limit):
    with pytest.raises(runtime.FdShortage) as e:
        runtime.fd_plan(limit, 50, 32, 30)
    assert str(e.value) == (
        f"this process may open only {limit} file descriptors (RLIMIT_NOFILE, its hard "
        f"limit included), and a system of 50 compartments needs at least 246: the 30 "
        f"open already, 4 for each compartment's engine and 16 for the supervisor's "
        f"sockets: raise the limit (ulimit -n) or run fewer compartments")
    runtime.fd_plan(246, 50, 32, 30)
