"""Finding a dataset's files: image files of any common suffix, keyed by the name that pairs
them with their labels; errors that name the files (core/datasets.py builds on these)."""
from core.decoding import IMAGE_SUFFIXES, LABEL_SUFFIXES
from core.errors import DataError

ANY_SUFFIX = f"(or {', '.join(IMAGE_SUFFIXES[1:])})"
MAX_NAMED = 5     # files named in an error about several


def list_files(folder, pattern, tail=""):
    """{name: path} of the image files `folder/pattern` (any suffix of IMAGE_SUFFIXES, any
    case) whose stem ends in `tail`; name = the path under `folder` without tail and suffix.
    Two files of one name (00001.png and 00001.jpg) are an error naming both."""
    out = {}
    for path in sorted(folder.glob(pattern)):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if not stem.endswith(tail):
            continue
        name = stem[: len(stem) - len(tail)]
        if name in out:
            raise DataError(f"two files for one item: {out[name]} and {path}; keep one")
        out[name] = path
    return out


def refuse_lossy(labels):
    """Label files must keep their ids exactly: JPEG or WebP would blur them."""
    lossy = [p for p in labels.values() if p.suffix.lower() not in LABEL_SUFFIXES]
    if lossy:
        raise DataError(f"{len(lossy)} label file(s) in a lossy format: {named(lossy)}; "
                        f"labels hold ids that lossy compression changes: use "
                        f"{', '.join(LABEL_SUFFIXES)}")


def named(paths):
    """The first few of `paths`, for an error message."""
    more = len(paths) - MAX_NAMED
    return ", ".join(map(str, paths[:MAX_NAMED])) + (f" and {more} more" if more > 0 else "")
