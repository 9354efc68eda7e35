"""A byte stream whose lines that are not UTF-8 are replaced, so that Arrow can skip them.

Arrow's CSV reader refuses a line that is not UTF-8 outright, for the whole file, and
cannot hand it to an ``invalid_row_handler`` (decoding it for the handler raises inside
Arrow, which prints ``Exception ignored ... UnicodeDecodeError``). The bad-line policy
wants such a line counted and skipped like any malformed line, so :class:`Utf8Lines`
sits between the (decompressed) file and Arrow and replaces it first.
"""

from typing import Dict

import pyarrow as pa

from torchrec_me.data.prepare.common import PrepareError

NOT_UTF8 = "not UTF-8"  # the skip reason


class Utf8Lines:
    """The bytes of ``source`` with every line that is not UTF-8 replaced by :attr:`MARKER`.

    The marker has no delimiter, so Arrow rejects it as a wrong column count and the scan
    logs it under :data:`NOT_UTF8`, with the line's first bytes kept in :attr:`bad` by
    line number. Line numbers and counts are unchanged. The check costs one ``isascii``
    per chunk for ASCII input.

    Args:
        source (pa.NativeFile): the (decompressed) input stream.
        name (str): the file, for messages.
        max_line (int): the longest line accepted, in bytes (Arrow's block size bounds
            a row anyway); a longer one is refused rather than buffered.
        chunk (int): bytes read from ``source`` at a time.
    """

    MARKER = "\x00not UTF-8\x00"

    def __init__(self, source: pa.NativeFile, name: str, max_line: int, chunk: int = 1 << 20) -> None:
        self.source = source
        self.name = name
        self.max_line = max_line
        self.chunk = chunk
        self.bad: Dict[int, bytes] = {}  # line number -> its first bytes
        self.closed = False
        self._tail = b""  # the unfinished last line read so far
        self._ready = b""  # checked bytes not handed out yet
        self._line = 1  # number of the first line of the next checked block
        self._pos = 0
        self._eof = False

    def read(self, nbytes: int = -1) -> bytes:
        parts, have = [self._ready], len(self._ready)
        while (nbytes < 0 or have < nbytes) and not self._eof:
            block = self._next_block()
            parts.append(block)
            have += len(block)
        data = b"".join(parts)
        if 0 <= nbytes < len(data):
            data, self._ready = data[:nbytes], data[nbytes:]
        else:
            self._ready = b""
        self._pos += len(data)
        return data

    def _next_block(self) -> bytes:
        """The next whole lines read (all that is left at the end), checked."""
        raw = self.source.read(self.chunk)
        if raw:
            data = self._tail + raw
            cut = data.rfind(b"\n") + 1
            block, self._tail = data[:cut], data[cut:]
            if len(self._tail) > self.max_line:
                line = self._line + block.count(b"\n")
                raise PrepareError(f"cannot read {self.name}: line {line} is longer than {self.max_line:,} bytes")
        else:
            self._eof = True
            block, self._tail = self._tail, b""
        if not block.isascii():
            block = self._replace_bad_lines(block)
        self._line += block.count(b"\n")
        return block

    def _replace_bad_lines(self, block: bytes) -> bytes:
        try:
            block.decode("utf-8")
            return block
        except UnicodeDecodeError:
            pass
        lines = block.split(b"\n")
        for k, line in enumerate(lines):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                self.bad[self._line + k] = line[:200]
                lines[k] = self.MARKER.encode()
        return b"\n".join(lines)

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
