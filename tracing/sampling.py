"""Rule-based, parent-based sampling, configured in conf/opentelemetry.toml.

```toml
[traces.sampler]
default_ratio = 1.0                 # roots no rule matches
[[traces.sampler.rules]]
path = "/health"                    # url.path, exact ("/api/*": a prefix)
ratio = 0.0
[[traces.sampler.rules]]
name = "websocket.message"          # the span's name when it starts
ratio = 0.1
```

- A span with a parent, local or remote, follows the parent's sampled flag:
  a trace is whole, and a node that receives a cluster message records its
  part exactly when the sender did.
- A root span takes the ratio of the first rule that matches it, else
  `default_ratio`. The decision is TraceIdRatioBased's: the low 64 bits of the
  trace id below `ratio * 2**64`. It depends on the trace id alone, so every
  node (and every sampler instance) decides the same for one trace.
- A rule matches on what the span has *when it starts*, which is all a sampler
  sees: `name` (the start name: an HTTP request span starts named by its method
  alone, `GET`, and gets its route later), `path` (`url.path`, exact, or a
  prefix with a trailing `*`) and `route` (`http.route` when the span starts
  with one, such as `WS /ws`; otherwise the template is matched against
  `url.path`, `{param}` matching any non-empty text, `/` included). Several
  matchers in one rule must all match.

`OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG`), when set, replaces all
of this with the SDK sampler it names. With no rules below 1.0 and no variable,
the SDK's default sampler itself is used (`DEFAULT_ON`, the same decisions), so
the lean tracer keeps its fast path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from tracing import spans as S
from tracing.config_tables import checked_table
from tracing.errors import TelemetryConfigError
from tracing.otel_env import SAMPLERS, OtelEnv

RULE_KEYS = ("name", "route", "path", "ratio")
MATCHER_KEYS = ("name", "route", "path")
SAMPLER_KEYS = ("default_ratio", "rules")

# The SDK's names for OTEL_TRACES_SAMPLER (the ratio ones take OTEL_TRACES_SAMPLER_ARG), and ours.
ENV_SAMPLERS = SAMPLERS

_TRACE_ID_LIMIT = (1 << 64) - 1
_HTTP_NAME = re.compile(r"^[A-Z]+ /")


def ratio_bound(ratio: float) -> int:
    """TraceIdRatioBased's bound: a root is sampled when its trace id's low 64 bits are below it."""
    return TraceIdRatioBased.get_bound_for_rate(ratio)


@dataclass(frozen=True)
class SamplingRule:
    ratio: float
    name: str | None = None
    route: str | None = None
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in MATCHER_KEYS if getattr(self, k) is not None}
        out["ratio"] = self.ratio
        return out

    def describe(self) -> str:
        return ",".join(f"{k}={getattr(self, k)}" for k in MATCHER_KEYS if getattr(self, k) is not None)


@dataclass(frozen=True)
class SamplerConfig:
    """The file's `[traces.sampler]` and, when set, the OTEL_TRACES_SAMPLER(_ARG) that win over it."""

    default_ratio: float = 1.0
    rules: tuple[SamplingRule, ...] = ()
    env_sampler: str | None = None
    env_arg: str | None = None

    @property
    def is_default(self) -> bool:
        """Decides exactly as the SDK's default (parent-based always-on) would."""
        return (self.env_sampler is None and self.default_ratio == 1.0
                and all(rule.ratio == 1.0 for rule in self.rules))

    def as_dict(self) -> dict[str, Any]:
        return {"default_ratio": self.default_ratio, "rules": [r.as_dict() for r in self.rules],
                "env_sampler": self.env_sampler, "env_arg": self.env_arg}


# -- configuration ---------------------------------------------------------------

def _ratio(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TelemetryConfigError(f"{where}{key} must be a number from 0.0 to 1.0 (got {value!r})")
    if not 0.0 <= value <= 1.0:
        raise TelemetryConfigError(f"{where}{key} must be from 0.0 to 1.0 (got {value!r})")
    return float(value)


def _rule(table: Any, key: str, where: str) -> SamplingRule:
    if not isinstance(table, Mapping):
        raise TelemetryConfigError(f"{where}{key} must be a table (a [[traces.sampler.rules]] entry)")
    try:
        checked_table(table, key, RULE_KEYS, where)
    except TelemetryConfigError as exc:
        raise TelemetryConfigError(f"{exc} (a rule has {', '.join(RULE_KEYS)})") from None
    if "ratio" not in table:
        raise TelemetryConfigError(f"{where}{key}.ratio is missing")
    matchers: dict[str, str] = {}
    for k in MATCHER_KEYS:
        if k in table:
            value = table[k]
            if not isinstance(value, str) or not value:
                raise TelemetryConfigError(f"{where}{key}.{k} must be a non-empty string (got {value!r})")
            matchers[k] = value
    if not matchers:
        raise TelemetryConfigError(f"{where}{key} has no matcher: give it name, route or path")
    if "name" in matchers and _HTTP_NAME.match(matchers["name"]):
        raise TelemetryConfigError(
            f"{where}{key}.name {matchers['name']!r}: an HTTP span starts named by its method alone "
            f"(its route is known only after sampling); match it with route or path instead")
    for k in ("route", "path"):
        if k in matchers and not matchers[k].startswith("/"):
            raise TelemetryConfigError(f"{where}{key}.{k} must start with / (got {matchers[k]!r})")
    return SamplingRule(ratio=_ratio(table["ratio"], f"{key}.ratio", where), **matchers)


def parse_sampler_table(table: Any, where: str = "") -> SamplerConfig:
    """`[traces.sampler]` as loaded from TOML; `where` prefixes messages (the file's name).

    Raises TelemetryConfigError naming the offending key.
    """
    prefix = f"{where}: " if where else ""
    table = checked_table(table, "traces.sampler", SAMPLER_KEYS, prefix)
    default_ratio = _ratio(table.get("default_ratio", 1.0), "traces.sampler.default_ratio", prefix)
    rules = table.get("rules", [])
    if not isinstance(rules, list):
        raise TelemetryConfigError(f"{prefix}traces.sampler.rules must be an array of tables "
                          "([[traces.sampler.rules]])")
    return SamplerConfig(default_ratio=default_ratio,
                         rules=tuple(_rule(r, f"traces.sampler.rules[{i}]", prefix)
                                     for i, r in enumerate(rules)))


def with_environment(cfg: SamplerConfig, otel: OtelEnv) -> SamplerConfig:
    """Add OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (checked by tracing/otel_env.py),
    which win over the file's rules."""
    if otel.sampler is None:
        return cfg
    return SamplerConfig(default_ratio=cfg.default_ratio, rules=cfg.rules, env_sampler=otel.sampler,
                         env_arg=otel.sampler_arg)


def build_sampler(cfg: SamplerConfig) -> Sampler:
    """The sampler to give the TracerProvider."""
    if cfg.env_sampler is not None and cfg.env_sampler != ENTRY_POINT_NAME:
        rate = float(cfg.env_arg) if cfg.env_arg is not None else 1.0
        fixed: dict[str, Sampler] = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF,
                                     "parentbased_always_on": DEFAULT_ON,
                                     "parentbased_always_off": DEFAULT_OFF}
        if cfg.env_sampler in fixed:
            return fixed[cfg.env_sampler]
        if cfg.env_sampler == "traceidratio":
            return TraceIdRatioBased(rate)
        return ParentBasedTraceIdRatio(rate)  # type: ignore[no-untyped-call]
    if cfg.is_default:
        return DEFAULT_ON  # the same decisions, and the lean tracer's fast path
    return RuleBasedSampler(cfg.default_ratio, cfg.rules)


def describe_sampler(sampler: Sampler) -> dict[str, Any]:
    """Any sampler as data: a RuleBasedSampler's rules, or another's SDK description."""
    if isinstance(sampler, RuleBasedSampler):
        return sampler.describe()
    return {"sampler": type(sampler).__name__, "description": sampler.get_description()}


# -- the sampler -------------------------------------------------------------------

def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^{}/]*\}", template)
    return re.compile(".+".join(re.escape(p) for p in parts))


@dataclass(frozen=True)
class _Compiled:
    rule: SamplingRule
    bound: int
    path_prefix: str | None = None  # path = "/api/*"
    route_regex: re.Pattern[str] | None = None

    @classmethod
    def of(cls, rule: SamplingRule) -> _Compiled:
        prefix = rule.path[:-1] if rule.path is not None and rule.path.endswith("*") else None
        regex = _template_regex(rule.route) if rule.route is not None and "{" in rule.route else None
        return cls(rule, ratio_bound(rule.ratio), prefix, regex)

    def matches(self, name: str, attributes: Attributes) -> bool:
        rule = self.rule
        if rule.name is not None and name != rule.name:
            return False
        if rule.path is None and rule.route is None:
            return True
        if not attributes:
            return False
        path = attributes.get(S.URL_PATH)
        if rule.path is not None:
            if not isinstance(path, str):
                return False
            if self.path_prefix is not None:
                if not path.startswith(self.path_prefix):
                    return False
            elif path != rule.path:
                return False
        if rule.route is not None:
            route = attributes.get(S.HTTP_ROUTE)
            if route is not None:
                return route == rule.route
            if not isinstance(path, str):
                return False
            if self.route_regex is not None:
                return self.route_regex.fullmatch(path) is not None
            return path == rule.route
        return True


_DROP = SamplingResult(Decision.DROP)


class RuleBasedSampler(Sampler):
    """Parent-based; roots by the first matching rule's ratio, else default_ratio (see module doc)."""

    def __init__(self, default_ratio: float = 1.0, rules: Sequence[SamplingRule] = ()) -> None:
        for i, rule in enumerate(rules):
            if not 0.0 <= rule.ratio <= 1.0:
                raise ValueError(f"rules[{i}].ratio must be from 0.0 to 1.0 (got {rule.ratio})")
            if rule.name is None and rule.route is None and rule.path is None:
                raise ValueError(f"rules[{i}] has no matcher")
        if not 0.0 <= default_ratio <= 1.0:
            raise ValueError(f"default_ratio must be from 0.0 to 1.0 (got {default_ratio})")
        self.default_ratio = default_ratio
        self.rules = tuple(rules)
        self._default_bound = ratio_bound(default_ratio)
        self._compiled = tuple(_Compiled.of(rule) for rule in rules)

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> RuleBasedSampler:
        return cls(cfg.default_ratio, cfg.rules)

    def root_ratio(self, name: str, attributes: Attributes = None) -> float:
        """The ratio a root span with this start name and these attributes is sampled at."""
        for compiled in self._compiled:
            if compiled.matches(name, attributes):
                return compiled.rule.ratio
        return self.default_ratio

    def sampled(self, parent: SpanContext | None, trace_id: int, name: str,
                attributes: Attributes) -> bool:
        """The decision alone (the one place it is made; tracing/lean.py calls it directly,
        without a SamplingResult or an attribute copy): a span with a parent follows the
        parent's sampled flag, a root takes its rule's ratio."""
        if parent is not None:
            return bool(parent.trace_flags.sampled)
        bound = self._default_bound
        for compiled in self._compiled:
            if compiled.matches(name, attributes):
                bound = compiled.bound
                break
        return trace_id & _TRACE_ID_LIMIT < bound

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent: SpanContext | None = get_current_span(parent_context).get_span_context()
        if parent is not None and not parent.is_valid:
            parent = None
        if self.sampled(parent, trace_id, name, attributes):
            # The attributes go back: the SDK's own Tracer builds the span from them.
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes,
                                  parent.trace_state if parent is not None else None)
        if parent is not None:
            return SamplingResult(Decision.DROP, None, parent.trace_state)
        return _DROP

    def get_description(self) -> str:
        rules = ",".join(f"{{{r.describe()}}}:{r.ratio}" for r in self.rules)
        return f"ParentBasedRules{{default={self.default_ratio},rules=[{rules}]}}"

    def describe(self) -> dict[str, Any]:
        """The sampler as data (for a /debug/telemetry page)."""
        return {
            "sampler": "parentbased_rules",
            "parent_based": True,
            "default_ratio": self.default_ratio,
            "rules": [rule.as_dict() for rule in self.rules],
            "description": self.get_description(),
        }


# The SDK's default sampler (parent-based, always on) decides as a rule-less RuleBasedSampler.
_DEFAULT_RULES = RuleBasedSampler(1.0)


def fast_sampler(sampler: Sampler) -> RuleBasedSampler | None:
    """The RuleBasedSampler deciding exactly as `sampler`, when there is one: ours (not a
    subclass, which may decide otherwise), or the SDK's DEFAULT_ON. tracing/lean.py then
    calls its `sampled` without building a SamplingResult."""
    if sampler is DEFAULT_ON:
        return _DEFAULT_RULES
    if type(sampler) is RuleBasedSampler:
        return sampler
    return None


# -- the entry point ---------------------------------------------------------------

ENTRY_POINT_NAME = "webserver_rules"
DEFAULT_CONFIG_PATH = "conf/opentelemetry.toml"


def rules_sampler_factory(arg: str | float | None = None) -> Sampler:
    """The `opentelemetry_traces_sampler` entry point `webserver_rules` (pyproject.toml):
    OTEL_TRACES_SAMPLER=webserver_rules makes any SDK setup (`opentelemetry-instrument`
    included) sample by `[traces.sampler]` of the file OTEL_TRACES_SAMPLER_ARG names
    (conf/opentelemetry.toml when unset). Raises TelemetryConfigError on a bad file."""
    import tomllib
    from pathlib import Path

    path = Path(str(arg) if arg else DEFAULT_CONFIG_PATH)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER_ARG: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TelemetryConfigError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("traces", {}).get("sampler", {}) if isinstance(data.get("traces"), dict) else {}
    return RuleBasedSampler.from_config(parse_sampler_table(table, str(path)))
