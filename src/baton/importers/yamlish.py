"""Read the YAML that MLflow writes (``MLmodel``, ``conda.yaml``, ``python_env.yaml``).

MLflow writes these files with PyYAML's ``safe_dump`` in block style: nested mappings,
sequences (``- item``, also level with their key), and scalars that are plain,
single-quoted or double-quoted, a long one folded over several lines (the signature's JSON
is one). This reader covers exactly that, so the engine takes no YAML library as a
dependency. It refuses anchors, tags and block scalars rather than guess at them.

Plain scalars stay strings (``null``, ``~`` and nothing become ``None``): every value the
importer reads is a name, a path or a version, and YAML's number rules would turn the
Python version ``3.10`` into the float ``3.1``.
"""

from __future__ import annotations

import re
from typing import Any

#: ``key:`` opening a mapping entry: a single- or double-quoted key, or a plain one (which
#: may hold a colon not followed by a space).
_KEY = re.compile(r"""^(?:'((?:[^']|'')*)'|"((?:[^"\\]|\\.)*)"|"""
                  r"""((?:[^\s'"#&*!|>%@`{\[?:-]|[?:-](?=\S))(?:[^:]|:(?=\S))*?))\s*:(?:\s+|$)""")
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v",
            "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\",
            "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029"}
_HEX = {"x": 2, "u": 4, "U": 8}


class YamlError(ValueError):
    """The text is not in the subset this reader takes; the message says where."""


def loads(text: str) -> Any:
    """The document in ``text``: a dict, a list, a string or ``None``."""
    lines = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if raw.startswith(("---", "...")) and stripped in ("---", "..."):
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlError(f"a tab in the indentation: {raw!r}")
        lines.append(raw.rstrip())
    reader = _Reader(lines)
    reader.skip_blank()
    if reader.i >= len(lines):
        return None
    value = reader.block(_indent(lines[reader.i]))
    reader.skip_blank()
    if reader.i < len(lines):
        raise YamlError(f"line {reader.i + 1} is outside the document: {lines[reader.i]!r}")
    return value


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class _Reader:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.i = 0

    def skip_blank(self) -> None:
        while self.i < len(self.lines) and (not self.lines[self.i].strip()
                                            or self.lines[self.i].lstrip().startswith("#")):
            self.i += 1

    def block(self, indent: int) -> Any:
        line = self.lines[self.i]
        body = line[indent:]
        if body == "-" or body.startswith("- "):
            return self.sequence(indent)
        if _KEY.match(body):
            return self.mapping(indent)
        return self.scalar(body, indent - 1)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if _indent(line) != indent or not (line[indent:] == "-"
                                               or line[indent:].startswith("- ")):
                break
            rest = line[indent + 1:]
            if not rest.strip():  # "-" alone: the item is the block below
                self.i += 1
                items.append(self.nested(indent, sequence_ok=False))
                continue
            inner = indent + 1 + _indent(rest)
            # "- key: value" (or "- - x"): the item is a block starting where its text does
            self.lines[self.i] = " " * inner + rest.lstrip(" ")
            body = self.lines[self.i][inner:]
            if body == "-" or body.startswith("- ") or _KEY.match(body):
                items.append(self.block(inner))
            else:
                items.append(self.scalar(body, indent))
            self.skip_blank()
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if _indent(line) != indent:
                if _indent(line) > indent:
                    raise YamlError(f"line {self.i + 1} is indented where no value may start:"
                                    f" {line!r}")
                break
            m = _KEY.match(line[indent:])
            if not m:
                break
            key = (m.group(1).replace("''", "'") if m.group(1) is not None
                   else _unescape(m.group(2)) if m.group(2) is not None else m.group(3))
            if key in out:
                raise YamlError(f"line {self.i + 1} repeats the key {key!r}")
            rest = line[indent + m.end():]
            if rest.strip() and not rest.lstrip().startswith("#"):
                out[key] = self.scalar(rest.strip(), indent)
            else:
                self.i += 1
                out[key] = self.nested(indent, sequence_ok=True)
            self.skip_blank()
        return out

    def nested(self, indent: int, *, sequence_ok: bool) -> Any:
        """The block under a key or a bare ``-``: more indented, or (under a key) a
        sequence at the key's own indentation; nothing there is ``None``."""
        self.skip_blank()
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        inner = _indent(line)
        level_list = sequence_ok and inner == indent and (line[inner:] == "-"
                                                          or line[inner:].startswith("- "))
        if inner > indent or level_list:
            return self.block(inner)
        return None

    def scalar(self, first: str, indent: int) -> Any:
        """A scalar starting on the current line; its continuation lines are those indented
        deeper than ``indent``. Moves past all of them."""
        parts = [first]
        self.i += 1
        if first[:1] in ("'", '"'):
            while _close(_fold(parts, escapes=first[0] == "\"")) < 0 and self.i < len(self.lines):
                parts.append(self.lines[self.i].strip())
                self.i += 1
            return _quoted(_fold(parts, escapes=first[0] == '"'), self.i)
        if first[:1] in ("&", "*", "!", "|", ">", "%", "@", "`"):
            raise YamlError(f"line {self.i}: anchors, tags and block scalars are not read "
                            f"here: {first!r}")
        while self.i < len(self.lines) and _indent(self.lines[self.i]) > indent \
                and self.lines[self.i].strip() and not self.lines[self.i].lstrip().startswith("#"):
            parts.append(self.lines[self.i].strip())
            self.i += 1
        return _plain(_fold(parts))


def _fold(parts: list[str], *, escapes: bool = False) -> str:
    """YAML's line folding: a line break is a space, an empty line a newline; in a
    double-quoted scalar, a line ending in an escaping backslash joins the next as is."""
    out = parts[0]
    for part in parts[1:]:
        if escapes and _ends_escaped(out):
            out = out[:-1] + part
        elif not part:
            out += "\n"
        else:
            out += ("" if out.endswith("\n") else " ") + part
    return out


def _ends_escaped(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def _close(text: str) -> int:
    """Where the quoted scalar opening ``text`` closes; -1 when it does not."""
    quote, i = text[0], 1
    while i < len(text):
        c = text[i]
        if quote == '"' and c == "\\":
            i += 2
        elif c == quote and quote == "'" and text[i + 1: i + 2] == "'":
            i += 2
        elif c == quote:
            return i
        else:
            i += 1
    return -1


def _quoted(text: str, line: int) -> str:
    quote, end = text[0], _close(text)
    if end < 0:
        raise YamlError(f"line {line}: a {quote}-quoted scalar is not closed")
    inner, rest = text[1:end], text[end + 1:].strip()
    if rest and not rest.startswith("#"):
        raise YamlError(f"line {line}: text after a quoted scalar: {rest!r}")
    return inner.replace("''", "'") if quote == "'" else _unescape(inner)


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = text[i + 1: i + 2]
        if e in _HEX:
            n = _HEX[e]
            out.append(chr(int(text[i + 2: i + 2 + n], 16)))
            i += 2 + n
        elif e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        else:
            raise YamlError(f"unknown escape \\{e} in {text!r}")
    return "".join(out)


def _plain(text: str) -> Any:
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    if text[:1] in ("{", "["):
        raise YamlError(f"flow collections are not read here: {text!r}")
    return re.sub(r"\s+#.*$", "", text)
