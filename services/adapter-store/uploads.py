"""Reading a multipart adapter upload as it streams in, with the size limit enforced per chunk.

Form: field ``name``; both PEFT files under the field ``files`` (their filenames say which is
which); optional ``visibility`` (private|public) and ``replace`` (bool).  Nothing is buffered
beyond the limit: the upload fails with 413 as soon as the files exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from loraplex.adapters.errors import AdapterTooLargeError
from loraplex.adapters.info import VISIBILITIES
from loraplex.errors import InvalidRequestError
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE, validate_name

FORM_FIELDS = ("name", "visibility", "replace")
_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 8
_DRAIN_CAP = (
    64 * 1024 * 1024
)  # after a 413, read (and drop) this much so the client sees the answer


@dataclass(frozen=True)
class AdapterUpload:
    name: str
    config_bytes: bytes
    weights_bytes: bytes
    visibility: str | None = None  # None: private when new, unchanged on replace
    replace: bool = False


def invalid(message: str, param: str | None = None) -> InvalidRequestError:
    err = InvalidRequestError(message)
    err.param = param  # type: ignore[attr-defined]  # shown as "param" in the error body
    return err


def parse_bool(value: object, param: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise invalid(f"{param} must be a boolean (true/false), got {value!r}", param)


def check_visibility(value: object) -> str | None:
    if value is not None and value not in VISIBILITIES:
        raise invalid(
            f"visibility must be one of {', '.join(VISIBILITIES)}, got {value!r}", "visibility"
        )
    return None if value is None else str(value)


def check_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("missing adapter name: send the field 'name'", "name")
    validate_name(value)  # AdapterError saying what the pattern is
    return value


def too_large(limit: int) -> AdapterTooLargeError:
    return AdapterTooLargeError(
        f"adapter upload exceeds the server's limit of {limit / 2**20:.4g} MiB (--max-adapter-mb)"
    )


class _Collector:
    """python-multipart callbacks collecting text fields and the two files."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.files: dict[str, bytearray] = {}
        self.file_bytes = 0
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._target: bytearray = bytearray()
        self._field: str | None = None

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > _MAX_PARTS:
            raise invalid("too many form parts: send name, visibility, replace and two files")
        self._disposition, self._field, self._target = b"", None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            if field not in FORM_FIELDS:
                raise invalid(
                    f"unknown form field {field!r}; expected {', '.join(FORM_FIELDS)}, files", field
                )
            self._field = field
            return
        if field != "files":
            raise invalid(
                f"files must be sent under the form field 'files' (got {field!r})", "files"
            )
        base = filename.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        if base not in (CONFIG_FILE, WEIGHTS_FILE):
            raise invalid(
                f"unexpected file {base!r}: send {CONFIG_FILE} and {WEIGHTS_FILE}", "files"
            )
        if base in self.files:
            raise invalid(f"{base} was sent twice", "files")
        self.files[base] = self._target
        self._field = None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._field is None:
            self.file_bytes += n
            if self.file_bytes > self.limit:
                raise too_large(self.limit)
        elif len(self._target) + n > _MAX_FIELD_BYTES:
            raise invalid(f"form field {self._field!r} is too long", self._field)
        self._target += data[start:end]

    def on_part_end(self) -> None:
        if self._field is not None:
            if self._field in self.fields:
                raise invalid(f"form field {self._field!r} was sent twice", self._field)
            self.fields[self._field] = self._target.decode("utf-8", "replace")

    def callbacks(self) -> dict[str, object]:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished")
        names += ("part_data", "part_end")
        return {f"on_{n}": getattr(self, f"on_{n}") for n in names}


async def read_multipart(request: Request, limit: int) -> AdapterUpload:
    """Stream-parse the form; AdapterTooLargeError (413) as soon as the files pass ``limit``."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise invalid("multipart body without a boundary in its Content-Type")
    collector = _Collector(limit)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    failure: Exception | None = None
    drained = 0
    try:
        async for chunk in request.stream():
            if failure is not None:  # keep reading (dropping) so the client gets our answer
                drained += len(chunk)
                if drained > _DRAIN_CAP:
                    break
                continue
            try:
                parser.write(chunk)
            except FormParserError:
                failure = invalid("malformed multipart/form-data body")
            except Exception as e:
                failure = e
    except ClientDisconnect as e:
        raise invalid("the client disconnected during the upload") from e
    if failure is not None:
        raise failure
    try:
        parser.finalize()
    except FormParserError as e:
        raise invalid("malformed multipart/form-data body (truncated?)") from e
    return _to_upload(collector)


def _to_upload(c: _Collector) -> AdapterUpload:
    name = check_name(c.fields.get("name"))
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if f not in c.files]
    if missing:
        raise invalid(f"missing file(s) {', '.join(missing)} under the form field 'files'", "files")
    return AdapterUpload(
        name=name,
        config_bytes=bytes(c.files[CONFIG_FILE]),
        weights_bytes=bytes(c.files[WEIGHTS_FILE]),
        visibility=check_visibility(c.fields.get("visibility") or None),
        replace=parse_bool(c.fields.get("replace", ""), "replace"),
    )
