"""One module per `maskd` sub-command; each exposes ``main(args) -> int``."""

import sys


def names_as_bytes_on_stdout() -> None:
    """A file name that is not UTF-8 (a Latin-1 'café.jpg' from a camera's SD card) is printed
    as its own bytes, never a UnicodeEncodeError that ends the command (stdout is strict under
    a UTF-8 locale such as en_GB.UTF-8)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
