"""``viewer.dicomweb_paths.parse``: the raw request path of every DICOMweb request.

Refusal: :class:`~viewer.dicomweb_paths.BadPath` (400).  An accepted path must also keep
the grammar's promises, checked here on every accepted input: no escape, dot segment or
empty segment got through, every UID is a valid UID, and the upstream URL is rebuilt
from those UIDs alone, so it parses back to the same target.
"""

from __future__ import annotations

from collections.abc import Callable

INSTRUMENT = ("viewer.dicomweb_paths",)
MAX_LEN = 4096


def load() -> Callable[[bytes], None]:
    from viewer.dicomweb_paths import BadPath, Resource, is_uid, parse

    def one_input(data: bytes) -> None:
        # Starlette hands the proxy the raw path as latin-1 text.
        path = data.decode("latin-1")
        try:
            target = parse(path)
        except BadPath:
            return
        rest = path[len("/dicom-web/"):]
        segments = rest.split("/")
        assert not any(c in rest for c in "%\\?#;"), path
        assert all(s not in ("", ".", "..") for s in segments), path
        for uid in (target.study, target.series, target.instance):
            assert uid is None or (is_uid(uid) and uid in segments), (path, uid)
        upstream = target.upstream_path()
        again = parse(upstream)
        if target.resource is Resource.THUMBNAIL:
            assert again.resource is Resource.RENDERED, (path, upstream)
        else:
            assert again == target, (path, upstream)
            assert upstream == path, (path, upstream)

    return one_input
