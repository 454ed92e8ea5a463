"""A few hundred inputs of the schema loader's fuzzer (fuzz/schemas.py), in one
long-lived child process, and proof that its checks fail when what they check
breaks."""
import pytest

from fuzz import schemas as FS


def test_a_few_hundred_schema_files_changing_between_loads_end_nothing():
    done, failures = FS.run(300, seed=20261205)
    assert done == 300
    assert failures == {}, failures


@pytest.mark.parametrize("breakage,check", [
    ("nocheck", "died: exit -6"), ("mirror-names", "error: names the private copy"),
    ("capnp-names", "error: an exception's text: ValueError")])
def test_each_check_fails_when_what_it_guards_is_broken(breakage, check):
    """Without the child's check the loader's own parser aborts the process (the
    fuzzer names the input it died at); an error naming the private copy is
    caught too, and so is a good file imported as "d.schema" refused with
    pycapnp's ValueError (its load() takes only names ending in .capnp)."""
    _done, failures = FS.run(300, seed=1, breakage=breakage)
    assert any(k.startswith(check) for k in failures), failures
