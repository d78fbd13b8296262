"""Reading a multipart adapter upload as it streams in, into a ``Spool`` file, with the size
limit enforced per chunk.

Form: field ``name``; the files under the field ``files`` (their filenames say which is which:
``adapter_files.classify``, so a ``save_pretrained`` folder can be sent as it is); optional
``visibility`` (private|public) and ``replace`` (bool).  The weights go to disk as they arrive
(memory: a batch of the body, not the file); the upload fails with 413 as soon as the files
exceed the limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from loraplex.adapters.errors import AdapterTooLargeError
from loraplex.adapters.info import VISIBILITIES
from loraplex.adapters.registration.adapter_files import classify
from loraplex.adapters.registration.spool import Spool
from loraplex.errors import AdapterError, InvalidRequestError
from loraplex.lora.names import CONFIG_FILE, WEIGHTS_FILE, validate_name

FORM_FIELDS = ("name", "visibility", "replace")
MAX_CONFIG_BYTES = 1024 * 1024
_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 32  # fields + a save_pretrained folder with its tokenizer files
_BATCH_BYTES = 1024 * 1024  # body bytes parsed (and written) per hop to a thread
_DRAIN_CAP = 64 * 1024 * 1024  # after a refusal, read (and drop) this much so the client sees it


@dataclass(frozen=True)
class AdapterUpload:
    """An upload read and not yet checked: the weights are in ``weights`` (a spool file), which
    whoever ends the upload deletes (``discard``; ``Registrar.register`` does)."""

    name: str
    config_bytes: bytes
    weights: Spool
    visibility: str | None = None  # None: private when new, unchanged on replace
    replace: bool = False
    source: str = ""  # a path registration's path as given (AdapterInfo.source)

    def discard(self) -> None:
        self.weights.delete()


def invalid(message: str, param: str | None = None) -> InvalidRequestError:
    err = InvalidRequestError(message)
    err.param = param  # type: ignore[attr-defined]  # shown as "param" in the error body
    return err


def check_text(value: object, param: str) -> object:
    """Refuse strings no name, path or flag can hold: NUL bytes and lone surrogates (which
    also cannot be encoded, as UTF-8 or as a file name)."""
    if isinstance(value, str) and ("\x00" in value or not value.isascii() and _surrogates(value)):
        raise invalid(f"{param} must be text without NUL bytes or lone surrogates", param)
    return value


def _surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_bool(value: object, param: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(check_text(value, param)).strip().lower()
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
    """python-multipart callbacks: text fields and the config in memory, the weights to a spool,
    ignored files counted and dropped."""

    def __init__(self, limit: int, spool_dir: str | None) -> None:
        self.limit = limit
        self.spool_dir = spool_dir
        self.fields: dict[str, str] = {}
        self.config: bytearray | None = None
        self.weights: Spool | None = None
        self.file_bytes = 0
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: str | None = None
        self._role = ""  # of the file part being read: config, weights or ignored
        self._text = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > _MAX_PARTS:
            raise invalid(f"too many form parts (more than {_MAX_PARTS})")
        self._disposition, self._field, self._role, self._text = b"", None, "", bytearray()

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
        try:
            self._role = classify(base)
        except AdapterError as e:
            e.param = "files"  # type: ignore[attr-defined]
            raise
        if (self._role == "config" and self.config is not None) or (
            self._role == "weights" and self.weights is not None
        ):
            raise invalid(f"{base} was sent twice", "files")
        if self._role == "config":
            self.config = bytearray()
        elif self._role == "weights":
            self.weights = Spool(self.spool_dir)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._field is not None:
            if len(self._text) + n > _MAX_FIELD_BYTES:
                raise invalid(f"form field {self._field!r} is too long", self._field)
            self._text += data[start:end]
            return
        self.file_bytes += n
        if self.file_bytes > self.limit:
            raise too_large(self.limit)
        if self._role == "weights":
            assert self.weights is not None
            self.weights.write(data[start:end])
        elif self._role == "config":
            assert self.config is not None
            if len(self.config) + n > MAX_CONFIG_BYTES:
                raise AdapterTooLargeError(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
            self.config += data[start:end]

    def on_part_end(self) -> None:
        if self._field is not None:
            if self._field in self.fields:
                raise invalid(f"form field {self._field!r} was sent twice", self._field)
            self.fields[self._field] = self._text.decode("utf-8", "replace")

    def callbacks(self) -> dict[str, object]:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished")
        names += ("part_data", "part_end")
        return {f"on_{n}": getattr(self, f"on_{n}") for n in names}

    def upload(self) -> AdapterUpload:
        name = check_name(self.fields.get("name"))
        missing = [f for f, got in ((CONFIG_FILE, self.config), (WEIGHTS_FILE, self.weights)) if got is None]  # fmt: skip
        if missing:
            raise invalid(
                f"missing file(s) {', '.join(missing)} under the form field 'files'", "files"
            )
        assert self.config is not None and self.weights is not None
        self.weights.finish()
        return AdapterUpload(
            name=name,
            config_bytes=bytes(self.config),
            weights=self.weights,
            visibility=check_visibility(self.fields.get("visibility") or None),
            replace=parse_bool(self.fields.get("replace", ""), "replace"),
        )

    def discard(self) -> None:
        if self.weights is not None:
            self.weights.delete()


async def read_multipart(request: Request, limit: int, spool_dir: str | None) -> AdapterUpload:
    """Stream-parse the form (weights to a spool under ``spool_dir``); AdapterTooLargeError (413)
    as soon as the files pass ``limit``."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise invalid("multipart body without a boundary in its Content-Type")
    collector = _Collector(limit, spool_dir)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        await _feed(request, parser)
        try:
            parser.finalize()
        except FormParserError as e:
            raise invalid("malformed multipart/form-data body (truncated?)") from e
        return collector.upload()
    except BaseException:
        collector.discard()
        raise


async def _feed(request: Request, parser: MultipartParser) -> None:
    """The body into ``parser`` in batches, each parsed (and its file data written) in a thread.
    After a refusal, keeps reading (and dropping) up to a cap so the client gets the answer."""
    failure: Exception | None = None
    batch: list[bytes] = []
    size = drained = 0

    async def flush() -> Exception | None:
        data, batch[:] = b"".join(batch), []
        try:
            await asyncio.to_thread(parser.write, data)
        except FormParserError:
            return invalid("malformed multipart/form-data body")
        except Exception as e:
            return e
        return None

    try:
        async for chunk in request.stream():
            if failure is not None:
                drained += len(chunk)
                if drained > _DRAIN_CAP:
                    break
                continue
            batch.append(chunk)
            size += len(chunk)
            if size >= _BATCH_BYTES:
                size, failure = 0, await flush()
        if failure is None and batch:
            failure = await flush()
    except ClientDisconnect as e:
        raise invalid("the client disconnected during the upload") from e
    if failure is not None:
        raise failure
