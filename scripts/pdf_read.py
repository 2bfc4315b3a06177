"""Reads PDFs the way a person's viewer does, for the PDF tests
(tests/invoice_documents.rs): PDFium (pypdfium2, pinned in
scripts/requirements-validate.txt) renders each page to pixels and
extracts its text, independently of the writer that made the PDF.

    scripts/ubl-validate.sh pdf OUTDIR NAME=FILE.pdf ...

For each NAME it writes OUTDIR/NAME.json:
    {"pages": N, "text": ["page 1 text", ...],
     "rendered": [{"page": 1, "width": W, "height": H, "ink": F}, ...]}
where `ink` is the share of pixels that are not white (a blank page has 0),
and OUTDIR/NAME-page1.png, the first page as PNG (for a person to look at).
Only the first and the last page are rendered: that is where the header,
the totals and the watermark are, and rendering hundreds of pages would
only make the test slow.
"""

import json
import struct
import sys
import zlib
from pathlib import Path

import pypdfium2 as pdfium


def png(path, width, height, rows):
    """Writes 8-bit greyscale `rows` (bytes per row) as a PNG, with the
    standard library only."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + row for row in rows)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def render(page, scale):
    """The page as greyscale rows and the share of non-white pixels."""
    bitmap = page.render(scale=scale, grayscale=True)
    width, height, stride = bitmap.width, bitmap.height, bitmap.stride
    buffer = bytes(bitmap.buffer)
    rows = [buffer[y * stride : y * stride + width] for y in range(height)]
    ink = sum(1 for row in rows for px in row if px < 250)
    return width, height, rows, ink / (width * height)


def read(name, pdf_path, out):
    document = pdfium.PdfDocument(str(pdf_path))
    pages = len(document)
    texts = []
    for index in range(pages):
        page = document[index]
        textpage = page.get_textpage()
        texts.append(textpage.get_text_bounded())
    rendered = []
    for index in sorted({0, pages - 1}):
        width, height, rows, ink = render(document[index], scale=1.0)
        if index == 0:
            png(out / f"{name}-page1.png", width, height, rows)
        rendered.append({"page": index + 1, "width": width, "height": height, "ink": ink})
    (out / f"{name}.json").write_text(
        json.dumps({"pages": pages, "text": texts, "rendered": rendered}, indent=1)
    )


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for spec in argv[2:]:
        name, _, path = spec.partition("=")
        read(name, Path(path), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
