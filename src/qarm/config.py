"""Typed experiment configs: one YAML file per experiment, one section per stage.

Every section is a dataclass that lives beside the stage it configures
(``qarm/<stage>/config.py``); this module assembles them, loads YAML, applies
``--set section.key=value`` overrides and validates types. An unknown key is an error that
names the key and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qarm.align.config import AlignConfig
from qarm.data.config import DataConfig, SplitConfig
from qarm.engine.config import EngineConfig
from qarm.errors import ConfigError
from qarm.pairs.config import PairsConfig
from qarm.quant.config import QuantizeConfig
from qarm.rank.config import RankConfig
from qarm.report.config import ReportConfig
from qarm.retrieve.config import RetrieveConfig
from qarm.serve.config import ServeConfig

BUILTIN_CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class Config:
    """A whole experiment. ``seed`` drives every random choice of every stage."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, sections: typing.Iterable[str]) -> str:
        """Hash of the named sections plus the seed: what decides whether a stage reruns."""
        payload = {"seed": self.seed}
        for name in sections:
            payload[name] = dataclasses.asdict(getattr(self, name))
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a built-in config (``demo``, ``movielens-100k``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    builtin = BUILTIN_CONFIG_DIR / f"{name_or_path}.yaml"
    if builtin.exists():
        return builtin
    known = sorted(p.stem for p in BUILTIN_CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a built-in config ({', '.join(known)})")


def load_config(name_or_path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``None``) and apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        _set_dotted(raw, key.strip().split("."), yaml.safe_load(value) if value != "" else "")
    return from_dict(Config, raw, "")


def load_run_config(run_dir: str | Path) -> Config:
    """The config a run directory's stages ran with (its ``config.json``, which ``run_stages`` writes;
    read as JSON: YAML would take ``2e-05`` for a string)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing: not a run directory (run a stage into it first)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return from_dict(Config, raw, "")


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def from_dict(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``raw``, checking every key and value type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!r}; valid keys{' of ' + where if where else ''}: "
            f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 and 2e-05 (no dot) as strings; a float field takes them as numbers
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value
