"""One typed schema layer for every file the toolkit reads (pydantic v2).

Each reader calls :func:`load_json`, :func:`load_jsonl`, :func:`load_yaml` or :func:`validate` once, at its
boundary, with one of the models below; what comes back is checked and typed. Any problem raises
:class:`cmikit.harness.errors.DataFileError` on one line naming the file, the line (JSON lines, CSV rows) and
the JSON path, what was found (cut to ~80 characters) and what is allowed, e.g.::

    kb.json: at answers.cat[3]: found 7; must be 0 or 1

Why pydantic: it is the validation library of this stack (transformers' serve, vLLM, TRL configs), its
errors carry the location of the bad value, and ranges, uniqueness and cross-field rules are declared next
to the field instead of being written as ``isinstance`` chains in every reader.

Ranges live here: probabilities in [0, 1], judge wins in {0, 0.5, 1}, finite lengths, non-empty
constitutions, unique ids, seeds >= 0, dataset names and file paths that stay inside their folder.
"""

from __future__ import annotations

import ast
import json
import math
import re
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from cmikit.harness.errors import DataFileError

CUT = 80
# A YAML or JSON document whose expansion holds more values than this is refused (a 600-byte alias bomb
# expands to millions); real configs and data rows are far below it.
MAX_NODES = 200_000


# ------------------------------------------------------------------------------------------ messages
def cut(value: Any, width: int = CUT) -> str:
    """``value`` as JSON-ish text, at most ``width`` characters (never expands a huge structure in full)."""
    if isinstance(value, str):
        text = json.dumps(value[: width + 2], ensure_ascii=False)
    elif isinstance(value, bytes):
        text = repr(value[: width + 2])
    elif isinstance(value, (list, tuple, dict)):
        text = _shallow(value, width)
    else:
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _shallow(value: Any, width: int, depth: int = 0) -> str:
    """A bounded rendering of a nested list/dict (a few items per level, a few levels)."""
    if depth > 3:
        return "..."
    if isinstance(value, dict):
        parts = [f"{json.dumps(str(k))[:30]}: {_shallow(v, width, depth + 1)}" for k, v in list(value.items())[:4]]
        return "{" + ", ".join(parts) + (", ..." if len(value) > 4 else "") + "}"
    if isinstance(value, (list, tuple)):
        parts = [_shallow(v, width, depth + 1) for v in list(value[:6])]
        return "[" + ", ".join(parts) + (", ..." if len(value) > 6 else "") + "]"
    if isinstance(value, str):
        return json.dumps(value[:40], ensure_ascii=False)
    return repr(value)[:40]


def json_path(loc: tuple[Any, ...]) -> str:
    """``("answers", "cat", 3)`` -> ``answers.cat[3]`` (pydantic's union / function tags are dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("function-", "list[", "dict[", "tuple[", "literal["))
                                        or part in ("str", "int", "float", "bool", "[key]")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_PHRASES = [("Input should be a valid ", "must be a "), ("Input should be ", "must be "),
            ("Value error, ", ""), ("Assertion failed, ", ""), ("Field required", "is required"),
            ("Extra inputs are not permitted", "is not an allowed key"), (" after validation", ""),
            ("Value should have", "must have"), ("List should have", "must have"),
            ("Dictionary should have", "must have"), ("Tuple should have", "must have"),
            ("String should have", "must have"), ("String should match pattern", "must match the pattern")]


def _allowed(message: str) -> str:
    for old, new in _PHRASES:
        message = message.replace(old, new)
    return message


def describe_error(err: ValidationError) -> str:
    """The first problem of a pydantic error as ``at <path>: found <value>; <what is allowed>``."""
    problems = err.errors(include_url=False, include_context=False)
    first = problems[0]
    loc = tuple(first.get("loc", ()))
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    if first.get("type") == "missing" and loc:
        parent = json_path(loc[:-1])
        return f"{'at ' + parent + ': ' if parent else ''}the key {str(loc[-1])!r} is required{more}"
    where = json_path(loc)
    head = f"at {where}: " if where else ""
    return f"{head}found {cut(first.get('input'))}; {_allowed(str(first.get('msg', 'not allowed')))}{more}"


# ------------------------------------------------------------------------------------------- reading
def read_bytes(path: str | Path, what: str = "file") -> bytes:
    path = Path(path)
    if path.is_dir():
        raise DataFileError(f"is a folder; expected a {what}", path=path)
    if not path.is_file():
        raise DataFileError(f"{what} not found", path=path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataFileError(f"cannot read the {what}: {err.strerror}", path=path) from None


def decode_utf8(data: bytes, path: str | Path, what: str = "file", line: int | None = None) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(f"not UTF-8 text ({err.reason} at byte {err.start}); save the {what} as UTF-8",
                            path=path, line=line) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; missing, unreadable or non-UTF-8 files raise :class:`DataFileError`."""
    return decode_utf8(read_bytes(path, what), path, what)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, path: str | Path, what: str = "JSON file", line: int | None = None,
               allow_nan: bool = False) -> Any:
    """``json.loads`` with errors as one line (bad syntax, NaN/Infinity unless ``allow_nan``, nesting too
    deep)."""
    try:
        return json.loads(text) if allow_nan else json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        at = line if line is not None else err.lineno
        col = f" (column {err.colno})"
        raise DataFileError(f"not valid JSON: {err.msg}{col}; expected a {what}", path=path, line=at) from None
    except ValueError as err:
        raise DataFileError(f"not valid JSON: {err}; expected a {what}", path=path, line=line) from None
    except RecursionError:
        raise DataFileError(f"nested too deeply to be a {what}", path=path, line=line) from None


def _count_nodes(value: Any, limit: int = MAX_NODES) -> int:
    seen, stack = 0, [value]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return seen
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return seen


@cache
def _adapter(schema: Any) -> TypeAdapter:
    return TypeAdapter(schema)


def validate(schema: Any, data: Any, path: str | Path | None, *, line: int | None = None,
             what: str = "file") -> Any:
    """``data`` checked against ``schema`` (a pydantic model or any type ``TypeAdapter`` takes)."""
    if _count_nodes(data) > MAX_NODES:
        raise DataFileError(f"holds more than {MAX_NODES} values (a YAML alias bomb or a runaway file); not a "
                            f"{what}", path=path, line=line)
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as err:
        raise DataFileError(f"not a {what}: {describe_error(err)}", path=path, line=line) from None
    except RecursionError:
        raise DataFileError(f"nested too deeply to be a {what}", path=path, line=line) from None


def load_json(path: str | Path, schema: Any = None, what: str = "JSON file") -> Any:
    """Read, parse and (with ``schema``) validate a JSON file."""
    data = parse_json(read_text(path, what), path, what)
    return data if schema is None else validate(schema, data, path, what=what)


def iter_jsonl(path: str | Path, what: str = "JSON lines file", allow_nan: bool = False):
    """``(line number, raw bytes, parsed value or DataFileError)`` for every non-blank line; never raises on a
    bad line (the caller decides: refuse, or set it aside)."""
    data = read_bytes(path, what)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value: Any = parse_json(decode_utf8(raw, path, what, number), path, what, number, allow_nan)
        except DataFileError as err:
            value = err
        yield number, raw, value


def load_jsonl(path: str | Path, schema: Any = None, what: str = "JSON lines file") -> list[Any]:
    """Every line of a JSON-lines file, each validated against ``schema``; the first bad line is refused."""
    rows = []
    for number, _raw, value in iter_jsonl(path, what):
        if isinstance(value, DataFileError):
            raise value
        rows.append(value if schema is None else validate(schema, value, path, line=number, what=what))
    return rows


def load_yaml(path: str | Path, schema: Any = None, what: str = "YAML config") -> Any:
    """A YAML file (safe loader), bounded in size after alias expansion, validated against ``schema``."""
    import yaml

    text = read_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DataFileError(f"not valid YAML: {cut(problem)}", path=path, line=line) from None
    except RecursionError:
        raise DataFileError(f"nested too deeply to be a {what}", path=path) from None
    data = {} if data is None else data
    return data if schema is None else validate(schema, data, path, what=what)


# ------------------------------------------------------------------------------------------- types
def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _unique(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"must not repeat; {cut(v, 40)} appears more than once")
        seen.add(v)
    return values


def _win(value: float) -> float:
    if value not in (0, 0.5, 1):
        raise ValueError("must be a win of 0, 0.5 or 1")
    return float(value)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _safe_name(value: str) -> str:
    if not _SAFE_NAME.match(value) or ".." in value:
        raise ValueError("must be a plain name (letters, digits, . _ -; no / or ..) to stay inside the data folder")
    return value


def _relative_path(value: str) -> str:
    p = PurePosixPath(value.replace("\\", "/"))
    if not value or p.is_absolute() or ".." in p.parts or value.startswith("~") or ":" in value:
        raise ValueError("must be a relative path that stays inside the dataset folder (no /.., ~ or :)")
    return value


NonEmptyStr = Annotated[StrictStr, Field(min_length=1), AfterValidator(lambda s: _nonblank(s))]


def _nonblank(s: str) -> str:
    if not s.strip():
        raise ValueError("must not be blank")
    return s


FiniteFloat = Annotated[float, Field(strict=False, allow_inf_nan=False), AfterValidator(_finite)]
NonNegativeFinite = Annotated[FiniteFloat, Field(ge=0)]
Probability = Annotated[FiniteFloat, Field(ge=0, le=1)]
Win = Annotated[float, AfterValidator(_win)]
Seed = Annotated[StrictInt, Field(ge=0)]
SafeName = Annotated[StrictStr, AfterValidator(_safe_name)]
RelativePath = Annotated[StrictStr, AfterValidator(_relative_path)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-fA-F]{64}$")]
Id = Annotated[StrictStr | StrictInt, AfterValidator(lambda v: _nonblank(str(v)))]
UniqueStrs = Annotated[list[NonEmptyStr], AfterValidator(_unique)]


class Strict(BaseModel):
    """A file object: unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Open(BaseModel):
    """A file object that may carry more keys than the toolkit reads (kept as given)."""

    model_config = ConfigDict(extra="allow", frozen=True)


# --------------------------------------------------------------------------- C-IP knowledge bases
def _answer_cell(value: Any) -> int | None:
    if value is None or (isinstance(value, (int, float)) and value in (0, 1)):
        return None if value is None else int(value)
    raise ValueError("must be 0, 1 or null (unknown)")


AnswerCell = Annotated[Any, AfterValidator(_answer_cell)]


class KnowledgeBaseFile(Open):
    """``{"questions": [...], "classes": [...], "answers": {class: [0/1/null per question]}}`` (AwA2 format;
    null: unknown)."""

    questions: Annotated[UniqueStrs, Field(min_length=1)]
    classes: Annotated[UniqueStrs, Field(min_length=1)]
    answers: dict[StrictStr, list[AnswerCell]]
    source: StrictStr = ""

    @model_validator(mode="after")
    def _rows(self) -> KnowledgeBaseFile:
        for name in self.classes:
            if name not in self.answers:
                raise ValueError(f"class {name[:40]!r} has no row in answers")
            if len(self.answers[name]) != len(self.questions):
                raise ValueError(f"answers of {name[:40]!r} must be {len(self.questions)} values of 0, 1 "
                                 f"or null (unknown), one per question, got {len(self.answers[name])}")
        return self


# --------------------------------------------------------------------------------- SAMI files
class ReferenceConstitutionFile(Open):
    """The reference ``{"positive": text, "negative": text, "identifiers": {...}}`` constitution file."""

    positive: NonEmptyStr
    negative: NonEmptyStr
    identifiers: dict[StrictStr, list[NonEmptyStr]] | None = None


def _unique_ids(rows: list[Any]) -> list[Any]:
    ids = [str(r["id"] if isinstance(r, dict) else r.id) for r in rows
           if (r.get("id") if isinstance(r, dict) else r.id) is not None]
    _unique(ids)
    return rows


QueryRows = Annotated[list[dict[StrictStr, Any]], Field(min_length=1), AfterValidator(_unique_ids)]
QueryStrings = Annotated[list[StrictStr], Field(min_length=1)]


class QueriesObject(Open):
    queries: QueryStrings | QueryRows


class ReferenceQueries(Open):
    """The reference responses format read for its questions: ``{"question": {id: text}}``."""

    question: dict[StrictStr, StrictStr]


QueryFile = ReferenceQueries | QueriesObject | QueryStrings | QueryRows


class ReferenceResponses(Open):
    """``{"question": {i: text}, "response": {i: text}, "constitution": {i: text}}`` (reference format)."""

    question: Annotated[dict[StrictStr, StrictStr], Field(min_length=1)]
    response: Annotated[dict[StrictStr, StrictStr], Field(min_length=1)]
    constitution: dict[StrictStr, StrictStr] = {}


class ResponseItem(Open):
    id: Id
    query: StrictStr
    response: StrictStr
    constitution: StrictStr = ""


def _unique_item_ids(rows: list[ResponseItem]) -> list[ResponseItem]:
    _unique([str(r.id) for r in rows])
    return rows


ResponseItems = Annotated[list[ResponseItem], Field(min_length=1), AfterValidator(_unique_item_ids)]
ResponseFile = ReferenceResponses | ResponseItems

# A released judge-output file: [win, len_baseline, len_candidate] rows.
JudgedRow = tuple[Win, NonNegativeFinite, NonNegativeFinite]
JudgedRows = Annotated[list[JudgedRow], Field(min_length=1)]


# ------------------------------------------------------------------------- C-IP conformal thresholds
def _history_length(value: str) -> str:
    if not value.isdigit():
        raise ValueError("must be a history length k (0, 1, 2, ...)")
    return value


class ThresholdsFile(Open):
    """``cip calibrate``'s thresholds file: per history length k, the calibration scores ``-f(S_k)_y`` (minus
    a probability, so in [-1, 0]) at miscoverage ``alpha`` in (0, 1), for a label set."""

    alpha: Annotated[Probability, Field(gt=0, lt=1)]
    scores: Annotated[dict[Annotated[StrictStr, AfterValidator(_history_length)],
                           Annotated[list[Annotated[FiniteFloat, Field(ge=-1 - 1e-6, le=1e-6)]], Field(min_length=1)]],
                      Field(min_length=1)]
    labels: Annotated[UniqueStrs, Field(min_length=2)]
    quantile_rule: Literal["finite-sample", "plain"] = "finite-sample"
    set_rule: Literal[">=", ">"] = ">="
    model: StrictStr = ""
    seed: Seed = 0
    metadata: dict[StrictStr, Any] = {}


class JudgeMetrics(Open):
    win: Probability  # the mean over the orders shown of 0 / 0.5 / 1 verdict scores
    unparsed: NonNegativeFinite
    soft_win: Probability | None = None


class JudgeRecord(Open):
    """One record of ``sami judge`` (``records.jsonl``): finite lengths, a win in [0, 1]."""

    len_candidate: NonNegativeFinite
    len_baseline: NonNegativeFinite
    metrics: JudgeMetrics
    judgements: list[dict[StrictStr, Any]]


# ---------------------------------------------------------------------------------------- MediQ
def _literal(value: Any) -> Any:
    """A CSV cell holding a Python/JSON literal (MediQ writes lists and dicts as text)."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        if value.count("[") + value.count("{") > 10_000:
            raise ValueError("nests more brackets than a MediQ cell holds")
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            pass
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError("must be a JSON or Python list/dict literal") from None
    return value


def _text(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError("must be text")


Cell = Annotated[str, BeforeValidator(_text)]


class MediQRow(Open):
    """One MediQ case (a JSONL line, or a CSV row whose list/dict cells are literals)."""

    question: NonEmptyStr
    context: Annotated[list[Cell] | Cell, BeforeValidator(_literal)]
    options: Annotated[Annotated[dict[Cell, Cell], Field(min_length=2)], BeforeValidator(_literal)]
    answer_idx: Cell
    facts: Annotated[list[Cell], BeforeValidator(_literal)]
    id: Cell | None = None
    specialty: Cell | None = None

    @model_validator(mode="after")
    def _answer_is_option(self) -> MediQRow:
        if self.answer_idx not in self.options:
            raise ValueError(f"answer_idx {cut(self.answer_idx, 20)} must be one of the options "
                             f"{sorted(self.options)[:8]}")
        return self


# --------------------------------------------------------------------------------- run folders
class RecordLine(Open):
    """One line of a run's ``records.jsonl``: an id and what the task recorded; metrics finite or null."""

    id: Annotated[StrictStr, AfterValidator(_nonblank)]
    metrics: dict[StrictStr, Any] | None = None


class RunFile(Open):
    """``run.json`` as :func:`cmikit.harness.runs.open_run` writes it."""

    kind: NonEmptyStr
    fingerprint: Sha256
    identity: dict[StrictStr, Any]
    config: dict[StrictStr, Any]
    created: StrictStr | None = None

    @model_validator(mode="after")
    def _identity(self) -> RunFile:
        if self.identity.get("kind") != self.kind:
            raise ValueError("identity.kind must equal kind (a run.json this toolkit wrote)")
        return self


# ------------------------------------------------------------------------------ dataset manifests
class ManifestFile(Strict):
    path: RelativePath
    url: Annotated[StrictStr, Field(pattern=r"^https?://")]
    size: Annotated[StrictInt, Field(ge=0)]
    sha256: Sha256


class ManifestDerived(Strict):
    path: RelativePath
    builder: NonEmptyStr
    size: Annotated[StrictInt, Field(ge=0)]
    sha256: Sha256


class ManifestDataset(Open):
    files: Annotated[list[ManifestFile], Field(min_length=1)]
    derived: list[ManifestDerived] = []
    description: StrictStr = ""
    source: StrictStr = ""
    licence: StrictStr = ""
    citation: StrictStr = ""


class Manifest(Open):
    datasets: Annotated[dict[SafeName, ManifestDataset], Field(min_length=1)]


# ------------------------------------------------------------------------------- model folders
class ModelConfigJson(Open):
    """The part of a checkpoint's ``config.json`` the toolkit reads before transformers does."""

    model_type: StrictStr | None = None
    architectures: list[StrictStr] | None = None
    auto_map: dict[StrictStr, Any] | None = None


PICKLED_WEIGHTS = ("pytorch_model.bin", "adapter_model.bin", "training_args.bin", "model.ckpt", "pytorch_model.pt")


def check_safetensors(path: Path) -> None:
    """A ``.safetensors`` file whose header parses (8-byte length + a JSON object of tensors within the
    file); junk is refused before safetensors or torch see it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 1 or 8 + n > size or n > 100 << 20:
                raise DataFileError("not a safetensors file (its header length does not fit the file); the "
                                    "weights are damaged: copy or save them again", path=path)
            header = handle.read(n)
    except OSError as err:
        raise DataFileError(f"cannot read the weights: {err.strerror}", path=path) from None
    try:
        meta = json.loads(header)
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise DataFileError("not a safetensors file (its header is not a JSON object); the weights are damaged: "
                            "copy or save them again", path=path)


def check_model_folder(folder: str | Path, adapter: bool = False) -> dict[str, Any]:
    """Check a local checkpoint (or PEFT adapter) folder before loading it: ``config.json`` (or
    ``adapter_config.json``) is a JSON object; weights are safetensors with a sound header (pickled
    ``.bin`` weights are refused: loading them would run code). Returns the parsed config."""
    folder = Path(folder)
    name = "adapter_config.json" if adapter else "config.json"
    config = load_json(folder / name, ModelConfigJson, what=f"model {name}")
    weights = sorted(folder.glob("*.safetensors"))
    pickled = [p.name for p in folder.iterdir() if p.name in PICKLED_WEIGHTS or p.suffix in (".bin", ".pt", ".pth")
               and "tokenizer" not in p.name]
    if pickled and not weights:
        raise DataFileError(f"holds only pickled weights ({', '.join(sorted(pickled)[:3])}); cmikit loads "
                            f"safetensors only (pickles can run code). Convert with save_pretrained("
                            f"safe_serialization=True)", path=folder)
    for p in weights:
        check_safetensors(p)
    return config.model_dump()


# ----------------------------------------------------------------------------------- YAML configs
ConfigMapping = dict[StrictStr, Any]
