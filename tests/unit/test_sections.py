import numpy as np
import pytest

from seechange.improc.sections import parse_section, section_shape, section_slices


def test_parse_basic():
    assert parse_section("[1:1024,1:4096]") == (1, 1024, 1, 4096)
    assert parse_section(" [ 3:5 , 7:9 ] ") == (3, 5, 7, 9)


def test_slices_select_the_right_pixels():
    a = np.arange(6 * 8).reshape(6, 8)  # ny=6, nx=8
    rows, cols = section_slices("[2:4,3:6]")
    sub = a[rows, cols]
    assert sub.shape == (4, 3) == section_shape("[2:4,3:6]")
    assert sub[0, 0] == a[2, 1] and sub[-1, -1] == a[5, 3]


def test_reversed_ranges():
    a = np.arange(6 * 8).reshape(6, 8)
    rows, cols = section_slices("[4:1,1:6]")
    sub = a[rows, cols]
    np.testing.assert_array_equal(sub, a[:, 3::-1])
    rows, cols = section_slices("[8:5,6:2]")
    np.testing.assert_array_equal(a[rows, cols], a[5:0:-1, 7:3:-1])
    assert section_shape("[8:5,6:2]") == (5, 4)


@pytest.mark.parametrize("bad", ["1:2,3:4", "[0:2,1:4]", "[a:2,1:4]", "[1:2]", ""])
def test_bad_sections(bad):
    with pytest.raises(ValueError):
        parse_section(bad)
