"""What partattn shows people: HTML pages (one writer, one stylesheet) for the pytest gate's
``index.html`` and the ``partattn run``/``show`` pages. No torch, no matplotlib."""

from .page import Cell, Page, render_index, write_index

__all__ = ["Cell", "Page", "render_index", "write_index"]
