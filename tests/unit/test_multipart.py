"""The strict multipart/form-data reader behind the batch-file check: plain forms read as the standard
library's MIME parser reads them; whatever it would have to guess about is a 400."""

from __future__ import annotations

import email.parser
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.errors import InvalidRequest
from sluice.server.multipart import MAX_HEAD, boundary_of, read_form

B = "xYz-boundary"


def part(name: str, data: bytes, *, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{B}\r\ncontent-disposition: {disposition}\r\n{extra}\r\n".encode() + data + b"\r\n"


def body(*parts: bytes, close: bytes = f"--{B}--\r\n".encode()) -> bytes:
    return b"".join(parts) + close


def bad(data: bytes, fragment: str, boundary: str = B) -> None:
    with pytest.raises(InvalidRequest) as caught:
        read_form(data, boundary)
    assert caught.value.code == "invalid_multipart" and fragment in caught.value.message, caught.value.message


def test_a_plain_form() -> None:
    data = body(part("purpose", b"batch"), part("file", b'{"a": 1}\n{"b": 2}\n', filename="b.jsonl",
                                                 extra="Content-Type: application/jsonl\r\n"))
    purpose, file = read_form(data + b"epilogue, ignored", B)
    assert (purpose.name, bytes(purpose.data), purpose.filename) == ("purpose", b"batch", None)
    assert (file.name, file.filename, file.content_type) == ("file", "b.jsonl", "application/jsonl")
    assert bytes(file.data) == b'{"a": 1}\n{"b": 2}\n'


def test_a_preamble_is_refused() -> None:
    bad(b"preamble\r\n" + body(part("purpose", b"batch")), "does not begin with its boundary")


def test_the_boundary_of_a_content_type() -> None:
    assert boundary_of(f"multipart/form-data; boundary={B}") == B
    assert boundary_of('Multipart/Form-Data;boundary="a b:c"') == "a b:c"
    for value in ("multipart/form-data", "multipart/mixed; boundary=x", "multipart/form-data; boundary=",
                  "multipart/form-data; boundary=x; boundary=y", "application/json", "multipart/form-data; b"):
        with pytest.raises(InvalidRequest):
            boundary_of(value)


def test_what_it_would_have_to_guess_about_is_refused() -> None:
    good = part("file", b"x")
    bad(body(good, close=b""), "closing boundary")
    bad(b"no boundary here", "does not begin with its boundary")
    bad(body(good).replace(f"--{B}\r\n".encode(), f"--{B} \r\n".encode(), 1), "other than a line break")
    bad(body(part("file", b"x", extra="x-note: a\r\n  folded\r\n")), "not `Name: value`")
    bad(body(part("file", b"x", extra="content-type: a\r\ncontent-type: b\r\n")), "twice")
    bad(body(part("file", b"x", extra="content-transfer-encoding: base64\r\n")), "transfer encoding")
    bad(body(f"--{B}\r\ncontent-disposition: attachment; name=\"file\"\r\n\r\nx\r\n".encode()), "form-data")
    bad(body(f"--{B}\r\ncontent-disposition: form-data; name=a; name=b\r\n\r\nx\r\n".encode()), "twice")
    bad(body(f"--{B}\r\ncontent-disposition: form-data; name*=UTF-8''f\r\n\r\nx\r\n".encode()), "form-data")
    bad(body(f"--{B}\r\n\r\nx\r\n".encode()), "not `Name: value`")
    bad(body(part("file", b"x", extra="x-big: " + "a" * MAX_HEAD + "\r\n")), "headers do not end")
    with pytest.raises(InvalidRequest):
        read_form(body(*[part(f"f{i}", b"x") for i in range(5)]), B, max_parts=4)


def test_quoted_names_are_unescaped() -> None:
    data = body(f'--{B}\r\ncontent-disposition: form-data; name="fi\\"le"; filename="a\\\\b"\r\n\r\nx\r\n'.encode())
    (only,) = read_form(data, B)
    assert (only.name, only.filename) == ('fi"le', "a\\b")


_TEXT = st.text(st.characters(categories=("L", "N", "P", "S"), exclude_characters="\"\\"), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(_TEXT, st.binary(max_size=64), st.none() | _TEXT), min_size=1, max_size=5))
def test_plain_forms_read_as_the_standard_librarys_parser_reads_them(
        fields: list[tuple[str, bytes, str | None]]) -> None:
    data = body(*[part(name, value, filename=filename) for name, value, filename in fields])
    if f"\r\n--{B}".encode() in b"".join(value for _, value, _ in fields):
        return  # a value holding the delimiter: not a valid form
    ours = [(p.name, bytes(p.data), p.filename) for p in read_form(data, B)]
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"content-type: multipart/form-data; boundary={B}\r\n\r\n".encode() + data)
    theirs = [(p.get_param("name", header="content-disposition"), p.get_payload(decode=True), p.get_filename())
              for p in message.iter_parts()]
    assert ours == theirs
