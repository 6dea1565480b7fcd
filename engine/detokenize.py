"""Turning a growing list of token ids into text deltas for streaming.

Byte-level tokens can end in the middle of a UTF-8 character (a Chinese character is
often split over two tokens), so text is only released once it decodes cleanly. Decoding
works on a short window rather than the whole answer, so each step costs the same.
The deltas always join to exactly the final text.
"""

from __future__ import annotations

from typing import Any


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any) -> None:
        # The Rust tokenizer decodes without the Python layers around it: this runs per token.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._decode_ids = backend.decode if backend is not None else tokenizer.decode
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self._decode_ids(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (may be empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Release whatever is held back at the end of generation."""
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        delta = full[len(prefix) :] if full.startswith(prefix) else ""
        self._prefix_offset = self._read_offset = len(self.ids)
        self.text += delta
        return delta
