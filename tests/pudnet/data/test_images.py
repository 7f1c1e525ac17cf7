"""ImageFolder's one rule (pudnet.data.images), which the loader, the sharding job, the client and the server share."""
import pytest

from pudnet.data.images import class_of, hidden


@pytest.mark.parametrize("parts, expected", [
    (("cat", "1.jpg"), "cat"),
    (("cat", "sub", "2.png"), "cat"),                 # nested folders belong to their top class folder
    (("cat", "notes.txt"), "cat"),                    # any extension is tried as an image
    (("stray.jpg",), None),                           # a file at the root is not labelled
    (("cat", ".DS_Store"), None),
    ((".git", "HEAD"), None),
    (("cat", ".hidden", "3.png"), None),
    (("__MACOSX", "cat", "._1.jpg"), None),
])
def test_class_of(parts, expected):
    assert class_of(parts) == expected


def test_hidden():
    assert hidden((".x",)) and hidden(("a", "__MACOSX")) and not hidden(("a", "b.c"))
