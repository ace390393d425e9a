"""A recipe resolved against a model: every weight matrix with the format, method and bits it will get.

Resolution rules: a unit takes the spec of the *last* group whose selector matches it; the router and norms
are left alone unless a group names their component explicitly (``component: router``), whatever else its
selector says; ``ignore`` selectors win over every group. A group that selects nothing, or a format that cannot
take a selected matrix's rows, is a recipe error naming the group's field and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantlab.formats import get_format
from quantlab.methods import DEFAULT_METHOD, get_method
from quantlab.models.units import WeightUnit
from quantlab.recipe import KEEP, Named, Recipe, Selector

PROTECTED = ("router", "norms")  # stay in high precision unless a group names them


def selects(selector: Selector, unit: WeightUnit) -> bool:
    if selector.component is not None and unit.component not in selector.component:
        return False
    if selector.layers is not None and (unit.layer is None or unit.layer not in selector.layers):
        return False
    if selector.experts is not None and (unit.expert is None or unit.expert not in selector.experts):
        return False
    if selector.regex is not None and not re.search(selector.regex, unit.name):
        return False
    return True


@dataclass
class PlanEntry:
    unit: WeightUnit
    group: int | None  # the index of the deciding group (None: a preset decided, or nothing did)
    format_name: str  # the format's full name, "keep" for none
    method: str  # "rtn", "lowrank(rank_ratio=0.25)", ... ; "" when kept
    bits_per_weight: float  # nominal bits per weight of the stored matrix (scales included)
    why: str  # how the rules decided, for the dry-run table
    fallback: str | None = None
    format_spec: Named | None = None  # what build applies; None: the unit stays as the model stores it
    method_spec: Named | None = None

    @property
    def quantized(self) -> bool:
        return self.format_spec is not None

    @property
    def applied(self) -> tuple[Named, Named]:
        """The format and method a quantized entry applies (resolve_plan gives a quantized entry both)."""
        if self.format_spec is None or self.method_spec is None:
            raise ValueError(f"{self.unit.name} is kept as the model stores it: it applies no format")
        return self.format_spec, self.method_spec


@dataclass
class Plan:
    recipe: Recipe
    entries: list[PlanEntry]
    keep_bits: float  # bits per weight of the model's own dtype
    other_parameters: int  # biases, attention sinks: never quantized, stored at keep_bits

    @property
    def quantized_weights(self) -> int:
        return sum(_numel(e.unit) for e in self.entries if e.quantized)

    @property
    def total_bytes(self) -> float:
        matrices = sum(_numel(e.unit) * e.bits_per_weight for e in self.entries) / 8
        return matrices + self.other_parameters * self.keep_bits / 8

    @property
    def total_weights(self) -> int:
        return sum(_numel(e.unit) for e in self.entries) + self.other_parameters

    @property
    def average_bits(self) -> float:
        return 8 * self.total_bytes / self.total_weights

    def summary(self) -> dict:
        return {
            "weights": self.total_weights,
            "quantized_weights": self.quantized_weights,
            "size_bytes": round(self.total_bytes),
            "average_bits_per_weight": round(self.average_bits, 4),
            "baseline_bits_per_weight": self.keep_bits,
        }


def _numel(unit: WeightUnit) -> int:
    return unit.shape[0] * unit.shape[1]


def resolve_plan(
    recipe: Recipe,
    units: list[WeightUnit],
    keep_bits: float,
    other_parameters: int,
    preset: dict[str, str] | None = None,
) -> Plan:
    """The plan for ``units``; raises the recipe's one-line error for a group that selects nothing or a
    format that cannot take a selected shape. ``preset`` (unit name -> format name, from ``quantlab.presets``)
    decides first; the recipe's groups override it."""
    decided: dict[str, int] = {}
    for index, group in enumerate(recipe.groups):
        matched = 0
        for unit in units:
            if unit.component in PROTECTED and not group.select.names_component(unit.component):
                continue
            if selects(group.select, unit):
                decided[unit.name] = index
                matched += 1
        if not matched:
            raise recipe.error(
                f"groups[{index}].select",
                f"selects no weight matrix of {recipe.model} ({group.select.describe()}); "
                "check the component, layer and expert ids (`quantlab build --dry-run` lists them)",
            )
    entries = []
    for unit in units:
        chosen = decided.get(unit.name)
        ignored = next((i for i, s in enumerate(recipe.ignore) if selects(s, unit)), None)
        if ignored is not None and chosen is not None:
            entries.append(PlanEntry(unit, None, KEEP, "", keep_bits, f"ignore[{ignored}]"))
            continue
        if chosen is None and preset and preset.get(unit.name, KEEP) != KEEP and ignored is None:
            entries.append(_preset_entry(recipe, unit, preset[unit.name]))
            continue
        if chosen is None:
            why = "router and norms stay unless named" if unit.component in PROTECTED else "no group selects it"
            if preset and unit.name in preset:
                why = f"preset {recipe.preset} keeps it"
            entries.append(PlanEntry(unit, None, KEEP, "", keep_bits, why))
            continue
        entries.append(_entry(recipe, chosen, unit, keep_bits))
    return Plan(recipe, entries, keep_bits, other_parameters)


def _preset_entry(recipe: Recipe, unit: WeightUnit, format_name: str) -> PlanEntry:
    fmt = get_format(format_name)
    why = f"preset {recipe.preset} (llama.cpp's choice)"
    problem = fmt.shape_problem(unit.shape)
    if problem:
        raise recipe.error("preset", f"{unit.name} of shape {unit.shape}: {problem}")
    return PlanEntry(
        unit,
        None,
        fmt.describe(),
        DEFAULT_METHOD,
        fmt.bits_per_weight,
        why,
        None,
        Named(name=format_name),
        Named(name=DEFAULT_METHOD),
    )


def _entry(recipe: Recipe, index: int, unit: WeightUnit, keep_bits: float) -> PlanEntry:
    group = recipe.groups[index]
    why = f"groups[{index}]" + (f" ({group.name})" if group.name else "")
    method_type = get_method(group.method.name)
    params = method_type.params(group.method.params)
    method = group.method.describe()
    shapes = method_type.stored_shapes(unit.shape, params)
    stored_values = sum(rows * columns for rows, columns in shapes)  # low rank: r (out + in) values for out x in
    if group.format.name == KEEP:
        if method_type.changes_weights_alone:
            return PlanEntry(
                unit,
                index,
                KEEP,
                method,
                keep_bits * stored_values / _numel(unit),
                why,
                None,
                group.format,
                group.method,
            )
        return PlanEntry(unit, index, KEEP, "", keep_bits, why)
    fmt = get_format(group.format.name, **group.format.params)
    bits = fmt.bits_per_weight * stored_values / _numel(unit)
    for shape in shapes:
        problem = fmt.shape_problem(shape)
        if problem:
            what = "its low-rank factor of shape" if shape != unit.shape else "of shape"
            raise recipe.error(
                f"groups[{index}].format",
                f"{unit.name} {what} {shape}: {problem}; exclude it from this group or choose another format",
            )
    fallback = None
    substitute = getattr(fmt, "substitute_for", lambda shape: None)(unit.shape)
    if substitute is not None:
        fallback = f"{fmt.describe()} -> {substitute.describe()} (llama.cpp's substitution for rows of {unit.shape[1]})"
        bits = substitute.bits_per_weight
    return PlanEntry(unit, index, fmt.describe(), method, bits, why, fallback, group.format, group.method)
