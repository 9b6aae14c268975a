"""``python -m clamp_pl.import_official <official .pth> model=... data=... out=<dir>``: the command's stable name
(DESIGN.md's contract) for :mod:`clamp_pl.tools.import_official`, where it lives with the other tools."""

from clamp_pl.tools.import_official import import_official, main

__all__ = ["import_official", "main"]

if __name__ == "__main__":
    main()
