"""Recipes: which tensors of a model get which number format and method, in plain MoE words (YAML + pydantic).

    name: int4-experts
    model: zoo:tiny-gpt-oss
    groups:
      - select: {component: experts}
        format: {name: int4, group_size: 32}
        method: rtn
      - select: {component: experts, layers: "0-1", experts: [0, 3]}
        format: bf16                 # later groups override earlier ones
    ignore:
      - {re: 'lm_head'}

Every mistake a user can make in a recipe is one ``UserError`` line naming the file, the field (``groups[1].format``)
and the YAML line. Checks that need the model (a selector that matches nothing, a row the format cannot take)
happen when the plan is resolved (``quantlab.plan``), which uses ``Recipe.line_of`` for the same kind of message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from quantlab.chat import NAMED
from quantlab.errors import UserError
from quantlab.export import get_export
from quantlab.formats import get_format
from quantlab.methods import get_method
from quantlab.methods.base import DEFAULT_METHOD
from quantlab.models import COMPONENTS
from quantlab.presets import LLAMA_CPP_PRESETS

KEEP = "keep"  # the format name that leaves a tensor as the model stores it


def parse_id_ranges(value: Any, what: str) -> tuple[int, ...]:
    """``"0-3,6"``, ``5`` or ``[0, 2]`` as a sorted tuple of ids; a clear ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be ids or ranges like '0-3,6', got {value!r}")
    if isinstance(value, int):
        value = [value]
    if isinstance(value, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ValueError(f"{what} must be non-negative integers, got {value!r}")
        return tuple(sorted(set(value)))
    if not isinstance(value, str):
        raise ValueError(f"{what} must be ids or ranges like '0-3,6', got {value!r}")
    ids: set[int] = set()
    for part in value.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"{what}: {part!r} in {value!r} is not an id or a range like '0-3'")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"{what}: range {part!r} runs backwards")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))


def _known_export(name: str) -> str:
    try:
        get_export(name)
    except UserError as error:
        raise ValueError(str(error)) from None
    return name


ExportName = Annotated[str, AfterValidator(_known_export)]  # reported per item: exports[0], exports[1], ...


class Selector(BaseModel):
    """Which weight matrices a group applies to. Every criterion given must hold (they combine with AND)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    component: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    experts: tuple[int, ...] | None = None
    regex: str | None = Field(default=None, alias="re")

    @field_validator("component", mode="before")
    @classmethod
    def _components(cls, value):
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            raise ValueError(f"component must be one of {', '.join(COMPONENTS)} (or a list of them)")
        for name in names:
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
        return tuple(names)

    @field_validator("layers", "experts", mode="before")
    @classmethod
    def _ids(cls, value, info):
        return None if value is None else parse_id_ranges(value, info.field_name)

    @field_validator("regex")
    @classmethod
    def _regex(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"re: {value!r} is not a valid regular expression ({error})") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self):
        if self.component is None and self.layers is None and self.experts is None and self.regex is None:
            raise ValueError("a selector needs at least one of component, layers, experts, re")
        return self

    def names_component(self, component: str) -> bool:
        return self.component is not None and component in self.component

    def describe(self) -> str:
        parts = []
        if self.component:
            parts.append("component=" + "|".join(self.component))
        if self.layers is not None:
            parts.append(f"layers={_ranges(self.layers)}")
        if self.experts is not None:
            parts.append(f"experts={_ranges(self.experts)}")
        if self.regex:
            parts.append(f"re={self.regex}")
        return " ".join(parts)


def _ranges(ids: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 6) -> '0-3,6'."""
    runs, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            runs.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(runs)


class Named(BaseModel):
    """A name with parameters: ``int4`` or ``{name: int4, group_size: 32}`` (the same for methods)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" in value:
            return {"name": value["name"], "params": {k: v for k, v in value.items() if k != "name"}}
        if isinstance(value, dict):
            raise ValueError("needs a 'name' key (e.g. {name: int4, group_size: 32}) or just the name")
        raise ValueError(f"must be a name or a mapping with a 'name' key, got {value!r}")

    def describe(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    select: Selector
    format: Named
    method: Named = Named(name=DEFAULT_METHOD)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: Named):
        if value.name == KEEP:
            if value.params:
                raise ValueError("format 'keep' takes no parameters")
            return value

        try:
            get_format(value.name, **value.params)
        except UserError as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: Named):
        try:
            method = get_method(value.name)
        except UserError as error:
            raise ValueError(str(error)) from None
        method.params(value.params)
        return value

    @model_validator(mode="after")
    def _method_and_format(self):
        try:
            _method_fits_format(self)
        except ValueError as error:  # reported on the method field, where the fix usually is
            raise ValueError(f"method: {error}") from None
        return self


def _method_fits_format(group: Group) -> None:
    problem = get_method(group.method.name).format_problem(group.format.name)
    if problem:
        raise ValueError(problem)


class Calibration(BaseModel):
    """Tokens a data-driven method (gptq, imatrix) runs through the model to see its activations."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "zoo:aime-style"
    samples: int = Field(default=128, ge=1)
    sequence_length: int = Field(default=64, ge=8)
    seed: int = 0
    # Layer by layer, each layer fed the outputs of the layers before it as quantized (GPTQ's "true sequential"),
    # instead of the baseline's; needs the streaming build, which computes statistics layer by layer anyway.
    sequential: bool = False


class Serve(BaseModel):
    """How a provider serves the variant: what the client asks (``reasoning_effort``) and where the host departs
    from serving it faithfully. Not part of the weights (the build ignores it).

    ``reasoning_effort`` is the request: every cell of an attribution asks it, the baseline included (asking for
    an effort is no fault). Each departure is a factor of ``quantlab attribute``, charged like a recipe choice:
    ``effort_honored: false`` (the stack drops the requested effort, so the template's default applies: the stale
    engine of the provider study), ``chat_template`` (a wrong rendering: ``chatml``, ``final-only``, ``plain`` or a
    Jinja file), ``temperature`` and ``top_p`` (sampling the client did not ask for)."""

    model_config = ConfigDict(extra="forbid")

    reasoning_effort: Literal["low", "medium", "high"] | None = None
    effort_honored: bool | None = None
    chat_template: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)

    @field_validator("chat_template")
    @classmethod
    def _template(cls, value):
        if value is not None and value not in NAMED and not value.endswith((".jinja", ".j2", ".jinja2")):
            raise ValueError(f"chat_template must be one of {', '.join(NAMED)} or a Jinja file (.jinja), got {value!r}")
        return value

    @model_validator(mode="after")
    def _honored_needs_a_request(self):
        if self.effort_honored is False and self.reasoning_effort is None:
            raise ValueError("effort_honored: false needs the reasoning_effort the client asks for")
        return self

    def settings(self) -> dict[str, Any]:
        """The settings this section sets."""
        return self.model_dump(exclude_none=True)

    def departures(self) -> dict[str, Any]:
        """The settings that depart from faithful serving: each a factor of ``quantlab attribute``."""
        return {
            key: value
            for key, value in self.settings().items()
            if key != "reasoning_effort" and not (key == "effort_honored" and value is True)
        }

    def evaluation_options(self, applied: set[str] | None = None) -> dict[str, Any]:
        """``evaluate``'s options for the request with the departures in ``applied`` (None: all of them)."""
        applied = set(self.departures()) if applied is None else applied
        options: dict[str, Any] = {}
        if self.reasoning_effort is not None and "effort_honored" not in applied:
            options["reasoning_effort"] = self.reasoning_effort  # dropped: the template writes its default
        for key in ("chat_template", "temperature", "top_p"):
            if key in applied and getattr(self, key) is not None:
                options[key] = getattr(self, key)
        return options


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    model: str
    seed: int = 0
    preset: str | None = None  # e.g. gguf-q4_k_m: llama.cpp's per-tensor choices, before the groups
    groups: list[Group] = []
    ignore: list[Selector] = []
    calibration: Calibration | None = None
    exports: list[ExportName] = []  # names from the exports registry (quantlab.export)
    serve: Serve | None = None

    _source: Path | None = PrivateAttr(default=None)
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value):
        if value is not None and value not in LLAMA_CPP_PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(LLAMA_CPP_PRESETS)}")
        return value

    @model_validator(mode="after")
    def _groups_or_preset(self):
        if not self.groups and self.preset is None:
            raise ValueError("a recipe needs groups (at least 1) or a preset")
        return self

    @model_validator(mode="after")
    def _calibration_when_needed(self):
        if any(get_method(g.method.name).needs_calibration for g in self.groups) and self.calibration is None:
            self.calibration = Calibration()  # the default: the embedded model's own task text
        return self

    def line_of(self, field: str) -> int | None:
        """The YAML line of a field path such as ``groups[1].select`` (the nearest enclosing one known)."""
        return _line_of(self._lines, field)

    def error(self, field: str, message: str) -> UserError:
        """A one-line error about ``field`` of this recipe, with its file and line."""
        return UserError(_where(self._source, self.line_of(field), field) + message)

    def resolved(self) -> dict:
        """The recipe with every default filled in, as the manifest records it."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=False)
        if data.get("calibration") and not data["calibration"]["sequential"]:
            del data["calibration"]["sequential"]  # so recipes written before the option keep their cache keys
        return data

    def as_yaml(self) -> str:
        """The recipe as a YAML file that loads back to an equal recipe (formats and methods in their
        ``{name: ..., param: ...}`` shorthand); how derived recipes (attribution cells) are written down."""

        def named(value: Named) -> dict | str:
            return {"name": value.name, **value.params} if value.params else value.name

        def selector(value: Selector) -> dict:
            return {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in value.model_dump(by_alias=True, exclude_none=True).items()
            }

        data: dict[str, Any] = {"name": self.name, "model": self.model, "seed": self.seed}
        if self.description:
            data["description"] = self.description
        if self.preset:
            data["preset"] = self.preset
        data["groups"] = [
            {
                **({"name": g.name} if g.name else {}),
                "select": selector(g.select),
                "format": named(g.format),
                "method": named(g.method),
            }
            for g in self.groups
        ]
        if self.ignore:
            data["ignore"] = [selector(s) for s in self.ignore]
        if self.calibration is not None:
            data["calibration"] = self.calibration.model_dump()
        if self.exports:
            data["exports"] = list(self.exports)
        if self.serve is not None and self.serve.settings():
            data["serve"] = self.serve.settings()
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _line_of(lines: dict[str, int], field: str) -> int | None:
    """The line of ``field``, or of the nearest enclosing field that has one (``groups[1].x`` -> ``groups[1]``)."""
    while field:
        if field in lines:
            return lines[field]
        parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", field)
        field = "" if parent == field else parent
    return None


def _where(source: Path | None, line: int | None, field: str) -> str:
    place = str(source) if source else "recipe"
    if line:
        place += f":{line}"
    return f"{place}: {field}: " if field else f"{place}: "


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith(("function-", "tagged-")):
            path += ("." if path else "") + str(part)
    return path


def _node_lines(node, prefix: str = "", lines: dict | None = None) -> dict[str, int]:
    """Field path -> 1-based line of every node of a composed YAML document."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            lines[path] = key.start_mark.line + 1
            _node_lines(value, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            lines[path] = item.start_mark.line + 1
            _node_lines(item, path, lines)
    return lines


SHIPPED_RECIPES = Path(__file__).resolve().parent / "recipes"  # package data: found after `pip install .` too


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with quantlab (``quantlab build mxfp4`` builds recipes/mxfp4.yaml)."""
    return sorted(p.stem for p in SHIPPED_RECIPES.glob("*.yaml"))


def find_recipe(reference: Path | str) -> Path:
    """The recipe file a reference names: a path to a file, or the name of a shipped recipe (``mxfp4``). The
    shipped one is named relative to the working directory where it is below it, as manifests then show it."""
    path = Path(reference)
    if path.is_file() or path.suffix in (".yaml", ".yml") or "/" in str(reference):
        return path
    shipped = SHIPPED_RECIPES / f"{reference}.yaml"
    if not shipped.is_file():
        raise UserError(
            f"recipe {str(reference)!r}: no such file, nor a shipped recipe (shipped: {', '.join(shipped_recipes())})"
        )
    return shipped


def load_recipe(path: Path | str) -> Recipe:
    """The recipe in a YAML file (or a shipped recipe's name), validated; any problem is one ``UserError`` line
    with file, field and line."""
    path = find_recipe(path)
    if not path.is_file():
        raise UserError(
            f"{path}: no such recipe file; the shipped recipes: {', '.join(shipped_recipes())} "
            "(quantlab build NAME or quantlab build recipes/NAME.yaml)"
        )
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; a recipe is YAML") from None
    return _validated(text, path)


def _validated(text: str, path: Path) -> Recipe:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path}{line}: YAML syntax error: {problem}; fix the line and run again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping with name, model and groups; got {type(data).__name__}")
    data.setdefault("name", path.stem)
    lines = _node_lines(node) if node is not None else {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        # A misspelled key also makes the intended one "missing": report the misspelling, the root cause.
        first = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        field = _field_path(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key {str(first['loc'][-1])!r}; check its spelling (see recipes/README.md)"
        elif first["type"] == "missing":
            message = "is required"
        raise UserError(_where(path, _line_of(lines, field), field) + message) from None
    recipe._source, recipe._lines = path, lines
    return recipe
