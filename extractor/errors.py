"""One error tree for the whole library, and its mapping to HTTP statuses.

    ExtractorError
    ├── SchemaError ................ the contract itself is at fault
    │   ├── UnknownSchema .......... no schema registered under that name (404)
    │   ├── SchemaRejected ......... compiles to nothing an engine can enforce (422)
    │   │   └── GrammarTimeout ..... its grammar did not compile within the time limit (422)
    │   └── AdapterRejected ........ a LoRA adapter made for another schema (version) or base model (422)
    ├── DocumentError .............. the document cannot be extracted from
    │   ├── EmptyDocument .......... empty or whitespace only (422)
    │   ├── UndecodableDocument .... not UTF-8 text, or an unreadable PDF (400)
    │   └── DocumentTooLarge ....... over the byte or token budget (413)
    ├── EngineError ................ the engine could not produce an output (503)
    │   ├── EngineUnavailable ...... down, not started, not reachable (503)
    │   ├── EngineOverloaded ....... asked us to back off (429)
    │   │   └── QueueFull .......... the service's request queue is full (429)
    │   ├── EngineTimeout .......... slower than the deadline (504)
    │   │   └── DeadlineExceeded ... the request's deadline passed, queued or running (504)
    │   └── GrammarNotEnforced ..... the engine ignores the JSON schema (502)
    ├── RequestError ............... the HTTP request itself is at fault (service, 400)
    │   ├── MalformedRequest ....... body not parseable as its content type (400)
    │   ├── InvalidRequest ......... body parsed but does not match the request model (422)
    │   ├── UnsupportedMediaType ... a content type or file type the service does not read (415)
    │   ├── Unauthorized ........... missing or unknown API key (401)
    │   ├── UnknownBatch ........... no batch job with that id (404)
    │   ├── RequestTimeout ......... the body did not arrive in time (408)
    │   ├── TooManyRequests ........ this client has too many requests in flight (429)
    │   └── IdempotencyConflict .... an Idempotency-Key reused with a different body (409)
    └── ExtractionFailed ........... outputs kept failing validation (422)

`http_status(exc)` is the one place where an error becomes a status code;
`error_class(code)` turns a `code` (an RFC 9457 problem `type`'s last segment) back into its class.
"""

from __future__ import annotations

from typing import Any


class ExtractorError(Exception):
    """Base of every error this library raises on purpose."""

    #: stable machine-readable identifier (RFC 9457 `type` suffix)
    code = "extractor-error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class SchemaError(ExtractorError):
    code = "schema-error"


class UnknownSchema(SchemaError):
    code = "unknown-schema"


class SchemaRejected(SchemaError):
    """The schema cannot be enforced; `path` is a JSON path into the schema."""

    code = "schema-rejected"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}", path=path, reason=reason)
        self.path = path
        self.reason = reason


class GrammarTimeout(SchemaRejected):
    """The schema's grammar did not compile within its time limit (the compile was killed)."""

    code = "grammar-timeout"


class AdapterRejected(SchemaError):
    """A LoRA adapter that does not fit: no manifest, another schema or schema version, another base
    model. Raised before any document is sent."""

    code = "adapter-rejected"


class DocumentError(ExtractorError):
    code = "document-error"


class EmptyDocument(DocumentError):
    code = "empty-document"


class UndecodableDocument(DocumentError):
    code = "undecodable-document"


class DocumentTooLarge(DocumentError):
    code = "document-too-large"


class EngineError(ExtractorError):
    code = "engine-error"


class EngineUnavailable(EngineError):
    code = "engine-unavailable"


class EngineOverloaded(EngineError):
    code = "engine-overloaded"


class EngineTimeout(EngineError):
    code = "engine-timeout"


class GrammarNotEnforced(EngineError):
    code = "grammar-not-enforced"


class QueueFull(EngineOverloaded):
    """The service already holds as many requests as it may (in flight plus waiting)."""

    code = "queue-full"


class DeadlineExceeded(EngineTimeout):
    """The request's deadline passed while it waited in the queue or ran."""

    code = "deadline-exceeded"


class RequestError(ExtractorError):
    code = "request-error"


class MalformedRequest(RequestError):
    code = "malformed-request"


class InvalidRequest(RequestError):
    """`errors` lists what did not match, one message per problem, each with its JSON path."""

    code = "invalid-request"


class UnsupportedMediaType(RequestError):
    code = "unsupported-media-type"


class Unauthorized(RequestError):
    code = "unauthorized"


class UnknownBatch(RequestError):
    """No batch job (service, `/batches/{id}`) has that id."""

    code = "unknown-batch"


class IdempotencyConflict(RequestError):
    """The `Idempotency-Key` already named a batch job created from a different body."""

    code = "idempotency-conflict"


class ExtractionFailed(ExtractorError):
    """Every attempt produced output that failed validation.

    `errors` holds, per attempt, the validation messages that were seen; `last_output`, what the
    model wrote on the last attempt (its start and end where it is long), or None.
    """

    code = "extraction-failed"

    def __init__(self, message: str, *, attempts: int, errors: list[list[str]],
                 last_output: str | None = None) -> None:
        extra = {} if last_output is None else {"last_output": last_output}
        super().__init__(message, attempts=attempts, errors=errors, **extra)
        self.attempts = attempts
        self.errors = errors
        self.last_output = last_output


class RequestTimeout(RequestError):
    """The client did not send the whole body within the read timeout."""

    code = "request-timeout"


class TooManyRequests(RequestError):
    """This client has as many requests in flight as it may."""

    code = "too-many-requests"


class MergeConflict(ExtractorError):
    """The chunks of a long document gave different values for a field whose merge rule is
    `raise` (`Task.merge_rules`); `field` names it, `values` lists them."""

    code = "merge-conflict"


_HTTP_STATUS: dict[type[ExtractorError], int] = {
    MergeConflict: 422,
    UnknownSchema: 404,
    SchemaRejected: 422,
    SchemaError: 422,
    EmptyDocument: 422,
    UndecodableDocument: 400,
    DocumentTooLarge: 413,
    DocumentError: 422,
    QueueFull: 429,
    EngineOverloaded: 429,
    DeadlineExceeded: 504,
    EngineTimeout: 504,
    GrammarNotEnforced: 502,
    EngineUnavailable: 503,
    EngineError: 503,
    MalformedRequest: 400,
    InvalidRequest: 422,
    UnsupportedMediaType: 415,
    Unauthorized: 401,
    UnknownBatch: 404,
    IdempotencyConflict: 409,
    RequestTimeout: 408,
    TooManyRequests: 429,
    RequestError: 400,
    ExtractionFailed: 422,
    ExtractorError: 500,
}


def http_status(exc: ExtractorError) -> int:
    """The HTTP status for an error: the entry of its nearest class in the tree."""
    for cls in type(exc).__mro__:
        if cls in _HTTP_STATUS:
            return _HTTP_STATUS[cls]
    return 500


def _subclasses(cls: type[ExtractorError]) -> list[type[ExtractorError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _subclasses(sub))]


def error_class(code: str) -> type[ExtractorError]:
    """The class of this tree whose `code` is `code`; `ExtractorError` for an unknown code."""
    for cls in _subclasses(ExtractorError):
        if cls.__module__ == __name__ and cls.code == code:
            return cls
    return ExtractorError
