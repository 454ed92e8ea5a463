"""supervisor.mounts: a path's place in its file system, through any mount."""
import os

from supervisor import mounts

LINES = (b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
         b"40 22 254:0 /srv/a\\040b /mnt/with\\040space\\012nl rw - ext4 /dev/vda rw\n"
         b"41 22 0:21 / /proc rw - proc proc rw\n"
         b"garbage\n"
         b"x 1 2 3 4\n")


def test_mountinfo_lines_are_parsed_with_the_kernels_escapes():
    table = mounts.parse(LINES)
    assert table == {22: ("254:0", "/", "/"),
                     40: ("254:0", "/srv/a b", "/mnt/with space\nnl"),
                     41: ("0:21", "/", "/proc")}


def test_a_path_beneath_a_mount_point_is_placed_within_the_mounts_root():
    assert mounts.within("/mnt/v", "/srv/a", "/mnt/v/x/y") == "/srv/a/x/y"
    assert mounts.within("/mnt/v", "/srv/a", "/mnt/v") == "/srv/a"
    assert mounts.within("/", "/", "/etc") == "/etc"
    assert mounts.within("/mnt/v", "/srv/a", "/mnt/vv/x") is None     # not beneath it
    assert mounts.within("/mnt/v", "/", "/mnt/v/x") == "/x"


def test_places_of_real_paths_names_not_there_yet_and_links(tmp_path):
    places = mounts.Places()
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    (dev, here), = places.object(str(tmp_path / "d"))
    # a name not made yet: its nearest existing directory's place, and the rest
    assert places.of(str(tmp_path / "d" / "x" / "y")) == {(dev, here + "/x/y")}
    # a link: the place of what it names, and of the link's own name
    assert places.of(str(tmp_path / "link")) == {(dev, here), (dev, here[:-2] + "/link")}
    assert places.of(str(tmp_path / "link"), follow=False) == {(dev, here[:-2] + "/link")}
    # nothing to go by, nothing placed: the paths alone are compared
    assert mounts.Places({}).object(str(tmp_path)) == frozenset()


def test_overlay_layers_are_read_from_the_super_options():
    text = (b"30 22 0:40 / /merged rw - overlay overlay "
            b"rw,lowerdir=/l1:/l\\:2,upperdir=/u\\,p,workdir=/w\n"
            b"31 22 0:41 / /mnt\\040x rw - overlay overlay rw,lowerdir=/a\\040b,upperdir=/c\n"
            b"32 22 254:0 / /srv rw - ext4 /dev/vda rw,upperdir=/not-an-overlay\n")
    assert mounts.overlays(text) == [("/merged", ("/l1", "/l:2", "/u,p")),
                                     ("/mnt x", ("/a b", "/c"))]


def test_a_file_in_an_overlay_is_placed_in_each_of_its_layers_too(tmp_path):
    """Without mounting: a table that says `merged` is an overlay of `low` and `up`
    places a name under `merged` in `up` and `low` as well, and back."""
    for d in ("merged", "up", "low"):
        (tmp_path / d).mkdir()
    real = mounts.Places()
    layers = [(str(tmp_path / "merged"), (str(tmp_path / "up"), str(tmp_path / "low")))]
    places = mounts.Places(real.mounts, layers)
    (dev, up), = real.object(str(tmp_path / "up"))
    (_, low), = real.object(str(tmp_path / "low"))
    assert {(dev, up + "/a.log"), (dev, low + "/a.log")} <= places.of(
        str(tmp_path / "merged" / "a.log"))
    (_, merged), = real.object(str(tmp_path / "merged"))
    assert (dev, merged + "/a.log") in places.of(str(tmp_path / "up" / "a.log"))
