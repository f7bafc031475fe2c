"""Documents cut into chunks for `lorakit data generate`: `read_documents(path)` reads text, Markdown, JSONL, PDF
(pypdf) and DOCX (python-docx) files; `chunk_documents(documents, max_chars, overlap)` cuts them at Markdown
headings, paragraphs and (for a paragraph too long) sentences, Chinese sentence ends (。！？) included. Every chunk
is an exact span of its document, so `document.text[chunk.start:chunk.end] == chunk.text`; a PDF's chunks also
name the pages they come from. A DOCX's headings become Markdown headings, so chunks follow its sections too.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown")
READABLE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".pdf", ".docx")
_PAGE_BREAK = "\n\n"
_JSONL_TEXT_FIELDS = ("text", "content")

_HEADING = re.compile(r"^#{1,6}[ \t]+\S.*$", re.M)
_PARAGRAPH = re.compile(r"(?:[^\n]*\S[^\n]*(?:\n|$))+")
# A sentence ends after 。！？ (closing quotes kept with it), or after . ! ? followed by white space.
_SENTENCE_END = re.compile(r"[。！？]+[”’」』）)\"']*|[.!?]+[\"')\]]*(?=\s)")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class Document:
    """A document's text; `page_starts` holds where each page begins in it (a PDF's), else it is empty."""

    source: str
    text: str
    page_starts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A span [start, end) of a document's text; `heading` is the Markdown heading it sits under ("" if none);
    `pages` the first and last page (from 1) the span lies on, for a document with pages."""

    id: str
    source: str
    start: int
    end: int
    text: str
    heading: str
    pages: tuple[int, int] | None = None

    @property
    def language(self) -> str:
        """'zh' when at least a fifth of the characters are CJK, else 'en'."""
        letters = [char for char in self.text if not char.isspace()]
        return "zh" if letters and len(_CJK.findall(self.text)) / len(letters) >= 0.2 else "en"


def read_documents(path: Path) -> list[Document]:
    """The documents of a file or of every readable file under a folder (sorted by path). A JSONL file gives one
    document per line, from its `text` or `content` field. Raises DataError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a document file or a folder of them.")
    files = ([path] if path.is_file() else
             sorted(file for file in path.rglob("*") if file.is_file() and file.suffix.lower() in READABLE_SUFFIXES))
    if path.is_file() and path.suffix.lower() not in READABLE_SUFFIXES:
        raise DataError(f"{path}: cannot read '{path.suffix}' files; give {', '.join(READABLE_SUFFIXES)}.")
    if not files:
        raise DataError(f"{path}: no documents to read (looked for {', '.join(READABLE_SUFFIXES)}).")
    documents = [document for file in files for document in _read_file(file)]
    return [document for document in documents if document.text.strip()]


def _read_file(path: Path) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        yield _pdf_document(path)
        return
    if suffix == ".docx":
        yield Document(str(path), _docx_text(path))
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    if suffix != ".jsonl":
        yield Document(str(path), text.replace("\r\n", "\n"))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
        field = next((name for name in _JSONL_TEXT_FIELDS if isinstance(record, dict)
                      and isinstance(record.get(name), str)), None)
        if field is None:
            raise DataError(f"{path}, line {number}: needs a string field 'text' or 'content' holding the document.")
        yield Document(f"{path}:{number}", record[field])


def _pdf_document(path: Path) -> Document:
    """The text of every page (pypdf's layout-free extraction), pages apart by a blank line."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [(page.extract_text() or "").strip() for page in PdfReader(path).pages]
    except (PdfReadError, ValueError) as err:
        raise DataError(f"{path}: not a readable PDF ({err}).") from None
    starts, position = [], 0
    for text in pages:
        starts.append(position)
        position += len(text) + len(_PAGE_BREAK)
    return Document(str(path), _PAGE_BREAK.join(pages), tuple(starts))


def _docx_text(path: Path) -> str:
    """Paragraphs and tables in document order; a paragraph styled "Heading N" (or "Title") becomes a Markdown
    heading of level N (1), a table row its cells joined by " | "."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not a readable DOCX file ({err}).") from None
    blocks = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows]
            blocks.append("\n".join(row for row in rows if row.strip(" |")))
            continue
        text, style = block.text.strip(), (block.style.name if block.style is not None else "")
        level = 1 if style == "Title" else int(style.split()[-1]) if re.fullmatch(r"Heading [1-6]", style) else 0
        blocks.append(f"{'#' * level} {text}" if level and text else text)
    return "\n\n".join(block for block in blocks if block)


def chunk_documents(documents: Sequence[Document], max_chars: int, overlap: int = 0) -> list[Chunk]:
    """Every document's chunks, in order: at most `max_chars` characters, never across a Markdown heading; a
    chunk starts up to `overlap` characters before the previous one ended, at a sentence or paragraph start."""
    return [chunk for document in documents for chunk in _chunk_document(document, max_chars, overlap)]


def _chunk_document(document: Document, max_chars: int, overlap: int) -> Iterator[Chunk]:
    for start, end, heading in _sections(document.text):
        units = list(_units(document.text, start, end, max_chars))
        starts = [unit_start for unit_start, _ in units]
        for chunk_start, chunk_end in _pack(units, starts, max_chars, overlap):
            pages = None
            if document.page_starts:
                pages = (bisect.bisect_right(document.page_starts, chunk_start),
                         bisect.bisect_right(document.page_starts, chunk_end - 1))
            yield Chunk(f"{document.source}:{chunk_start}-{chunk_end}", document.source, chunk_start, chunk_end,
                        document.text[chunk_start:chunk_end], heading, pages)


def _sections(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, heading) per Markdown section; the heading line belongs to its section."""
    cuts = [match.start() for match in _HEADING.finditer(text)]
    bounds = [0, *[cut for cut in cuts if cut > 0], len(text)]
    for start, end in zip(bounds, bounds[1:]):
        match = _HEADING.match(text, start)
        yield start, end, match[0].lstrip("#").strip() if match else ""


def _units(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """Paragraph spans, a paragraph longer than `max_chars` cut into sentences, a sentence too long cut hard."""
    for paragraph in _PARAGRAPH.finditer(text, start, end):
        para_start, para_end = paragraph.start(), paragraph.start() + len(paragraph[0].rstrip())
        if para_end - para_start <= max_chars:
            yield para_start, para_end
            continue
        for sentence_start, sentence_end in _sentences(text, para_start, para_end):
            for piece in range(sentence_start, sentence_end, max_chars):
                yield piece, min(piece + max_chars, sentence_end)


def _sentences(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    position = start
    for match in _SENTENCE_END.finditer(text, start, end):
        yield position, match.end()
        position = match.end()
        while position < end and text[position].isspace():
            position += 1
    if position < end:
        yield position, end


def _pack(units: list[tuple[int, int]], starts: list[int], max_chars: int,
          overlap: int) -> Iterator[tuple[int, int]]:
    chunk_start, chunk_end = None, None
    for unit_start, unit_end in units:
        if chunk_start is not None and unit_end - chunk_start > max_chars:
            yield chunk_start, chunk_end
            chunk_start = _overlap_start(starts, chunk_start, chunk_end, overlap)
            if chunk_start is None or unit_end - chunk_start > max_chars:
                chunk_start = unit_start
        if chunk_start is None:
            chunk_start = unit_start
        chunk_end = unit_end
    if chunk_start is not None:
        yield chunk_start, chunk_end


def _overlap_start(starts: list[int], chunk_start: int, chunk_end: int, overlap: int) -> int | None:
    """The earliest unit start in the last `overlap` characters of the chunk (after its own start), or None."""
    if overlap <= 0:
        return None
    index = bisect.bisect_left(starts, chunk_end - overlap)
    if index < len(starts) and chunk_start < starts[index] < chunk_end:
        return starts[index]
    return None
