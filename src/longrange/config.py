"""Configuration dataclasses, presets by name, YAML load/save.

`ModelConfig` holds the shared sizes plus one small config per mechanism. Which mechanism each
layer uses is the per-layer list `ModelConfig.layers` of registry kinds (``"full"``, ``"xl"``,
``"lsh"``, ...). Only `longrange.model.build.build_model` reads a `ModelConfig`; modules take plain
arguments. Every value is a plain Python type (``Literal`` strings, ints, floats, lists) so a
config round-trips through YAML and is saved beside every checkpoint.

A config error is a `ConfigError` (a `ValueError`) that names the bad key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml

if TYPE_CHECKING:  # the built-in sections' types, for type checkers only: at run time this module imports no mechanism
    from longrange.attention.compressive import CompressiveConfig
    from longrange.attention.full import FullConfig
    from longrange.attention.knn import KNNConfig
    from longrange.attention.local import LocalConfig
    from longrange.attention.lsh import LSHConfig
    from longrange.attention.luna import LunaConfig
    from longrange.attention.xl import XLConfig

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key and the choices."""


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")


def _check_positive(key: str, value: int | float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


# --------------------------------------------------------------------------- model config


@dataclass(frozen=True)
class Section:
    """What the config and the programs know of a mechanism, declared by its registration (`attention.register`).

    Every fact about a mechanism that code outside ``attention/`` needs lives here, so no caller tests a kind by
    name: the comparison reads reach, whole-row reading and the memory to ablate; the trainer reads `run_files`.
    """

    kind: str  # the name in `ModelConfig.layers`, and of the config section (``cfg.<kind>``)
    cls: type  # the section's dataclass; its fields are the attention class's keyword arguments
    stateful: bool = False  # carries memory across segments (the attention class's ``stateful``)
    memory_size_key: str | None = None  # the field that sets its memory size (the comparison's ablations)
    # when a model's layers hold several memories, the comparison ablates the one of the highest rank (ties: the
    # upper layer's); XL's cache ranks 0, as the memories that extend it (compressed, kNN) keep one of their own
    memory_rank: int = 1
    # (tokens of context a layer adds to a prediction's reach, the term's name in the formula) from the section;
    # None: a stateful layer adds its memory size (stated as an estimate), a stateless one nothing
    reach: Callable[[Any], tuple[int, str]] | None = None
    whole_row: bool = False  # built to read a long sequence in one pass (the comparison gives it the whole row)
    # section overrides that keep the mechanism's own files under a run folder (section, folder) -> {key: value}
    run_files: Callable[[Any, Path], dict[str, Any]] | None = None
    # training FLOPs per token of one layer (section, d_model, segment_len) -> FLOPs (`longrange.bench.mfu`)
    flops: Callable[[Any, int, int], float] | None = None
    # FLOPs per token of a search the layer does besides (section, d_model) -> FLOPs, counted only on request
    search_flops: Callable[[Any, int], float] | None = None

    def span(self, values: Any) -> tuple[int, str] | None:
        """(tokens of context a layer of this kind adds, the term's name), or None; `values`: its section."""
        if self.reach is not None:
            return self.reach(values)
        if not self.stateful:
            return None
        size = int(getattr(values, self.memory_size_key)) if self.memory_size_key else 0
        return size, f"{self.kind} memory (estimate)"


# kind -> Section, in registration order; filled by `longrange.attention` (this module imports no mechanism)
_REGISTERED: dict[str, Section] = {}


def register_section(kind: str, cls: type, **facts: Any) -> Section:
    """Declare the config section of attention `kind` and its facts (the keyword arguments of `Section`).

    `ModelConfig` then accepts the kind in ``layers`` and as a key.
    """
    shared = {f.name for f in dataclasses.fields(ModelConfig)}
    if not kind.isidentifier() or kind.startswith("_") or kind in shared or hasattr(ModelConfig, kind):
        raise ValueError(f"attention kind {kind!r} must be an identifier that no ModelConfig field or method uses")
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise ValueError(f"the config section of {kind!r} must be a dataclass, got {cls!r}")
    memory_size_key = facts.get("memory_size_key")
    if memory_size_key is not None and memory_size_key not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"memory_size_key {memory_size_key!r} is not a field of {cls.__name__}")
    section = Section(kind, cls, **{**facts, "stateful": bool(facts.get("stateful", False))})
    _REGISTERED[kind] = section
    return section


def unregister_section(kind: str) -> None:
    """Forget attention `kind` (tests that register a mechanism for a while)."""
    _REGISTERED.pop(kind, None)


def sections() -> dict[str, Section]:
    """The registered sections, kind -> `Section`, in registration order."""
    return dict(_REGISTERED)


def _section_value(kind: str, value: Any) -> Any:
    cls = _REGISTERED[kind].cls
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return dataclass_from_dict(cls, value, prefix=f"{kind}.")
    raise ConfigError(f"{kind} must be a mapping of {cls.__name__} keys, got {value!r}")


@dataclass(init=False, eq=False, repr=False)
class ModelConfig:
    """A language model: embeddings -> blocks (one attention kind per layer) -> head.

    Besides the fields below, a config holds one section per registered mechanism, an attribute named by
    its kind (``cfg.xl.mem_len``); the constructor takes each as a keyword argument, a mapping or the
    section's dataclass (``ModelConfig(layers=["xl"], xl={"mem_len": 64})``). `section` reads one by name,
    also of a mechanism registered after the config was made.
    """

    if TYPE_CHECKING:  # what type checkers see of the built-in sections (the constructor sets every registered one)

        @property
        def full(self) -> FullConfig: ...
        @property
        def xl(self) -> XLConfig: ...
        @property
        def lsh(self) -> LSHConfig: ...
        @property
        def local(self) -> LocalConfig: ...
        @property
        def luna(self) -> LunaConfig: ...
        @property
        def compressive(self) -> CompressiveConfig: ...
        @property
        def knn(self) -> KNNConfig: ...

    name: str = "custom"
    vocab_size: int = 256  # bytes by default
    d_model: int = 256
    n_heads: int = 4
    d_ff: int | None = None  # None: 4 * d_model
    layers: list[str] = field(default_factory=lambda: ["full"] * 4)  # attention kind per layer
    segment_len: int = 256  # tokens per forward in training / evaluation
    dropout: float = 0.0
    positions: Literal["none", "sinusoidal", "learned", "axial"] = "none"  # absolute, added to embeddings
    max_len: int = 65536  # longest sequence an absolute position table covers
    axial_shape: list[int] | None = None  # factorisation of max_len for axial positions
    reversible: bool = False  # reversible residual blocks (Reformer)
    # read-out of the two reversible halves: "mean" (Y1 + Y2) / 2 -> LayerNorm(d), or "concat" [Y1 ; Y2] ->
    # LayerNorm(2d) -> head (2d -> vocab), as Hugging Face / trax Reformer checkpoints do
    reversible_readout: Literal["mean", "concat"] = "mean"
    head_bias: bool = False  # a bias on the LM head (Hugging Face Reformer checkpoints have one)
    ff_activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"  # feed-forward non-linearity
    norm_eps: float = 1e-5  # LayerNorm epsilon (Hugging Face Reformer: 1e-12)
    # evaluation of models without memories, called without a state: an input longer than eval_pad_min tokens
    # whose length is not a multiple of eval_pad_multiple is padded with pad_token (masked, never attended; a
    # given pad_mask is extended) to that multiple, and the padding's outputs dropped. Hugging Face Reformer
    # checkpoints need it: transformers pads to the least common multiple of the chunk lengths, and the
    # padding's hashes move LSH chunk boundaries. Never in training, nor for models with memories (their state
    # would keep the padding). 1: never pad
    eval_pad_multiple: int = 1
    eval_pad_min: int = 0
    pad_token: int = 0
    axial_dims: list[int] | None = None  # widths of the two axial embeddings (sum d_model); None: d/2 each
    ff_chunks: int = 1  # feed-forward applied in this many chunks along time
    head_chunks: int = 1  # LM head + loss applied in this many chunks along time
    tie_embeddings: bool = False

    def __init__(self, **kwargs: Any) -> None:
        fields = dataclasses.fields(self)
        unknown = sorted(set(kwargs) - {f.name for f in fields} - set(_REGISTERED))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; allowed keys: {sorted(_config_keys(ModelConfig))}")
        for f in fields:
            if f.name in kwargs:
                value = kwargs[f.name]
            else:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            setattr(self, f.name, value)
        for kind in _REGISTERED:
            setattr(self, kind, _section_value(kind, kwargs.get(kind)))
        self.__post_init__()

    def section(self, kind: str) -> Any:
        """The section of registered mechanism `kind` (``cfg.section("xl") is cfg.xl``); a config made before
        `kind` was registered gets its defaults."""
        if kind not in _REGISTERED:
            raise ConfigError(f"no attention kind {kind!r} is registered; registered: {list(_REGISTERED)}")
        if kind not in self.__dict__:
            setattr(self, kind, _REGISTERED[kind].cls())
        return self.__dict__[kind]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._as_dict(_REGISTERED) == other._as_dict(_REGISTERED)

    __hash__ = None  # mutable, as a dataclass with eq

    def __repr__(self) -> str:
        items = [f"{k}={v!r}" for k, v in dataclasses.asdict(self).items()]
        items += [f"{kind}={self.section(kind)!r}" for kind in _REGISTERED if kind in self.layers]
        return f"ModelConfig({', '.join(items)})"

    def _as_dict(self, kinds: Any) -> dict[str, Any]:
        """The fields, then the sections of `kinds` as plain dicts."""
        data = dataclasses.asdict(self)
        data.update({kind: dataclasses.asdict(self.section(kind)) for kind in kinds})
        return data

    def __post_init__(self) -> None:
        check_field_types(self)  # types first: the checks below compare and compute with the values
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for i, kind in enumerate(self.layers):
            _check_choice(f"layers[{i}]", kind, tuple(_REGISTERED))
        if not self.layers:
            raise ConfigError("layers must name at least one attention kind")
        for key in (
            "vocab_size",
            "d_model",
            "n_heads",
            "d_ff",
            "segment_len",
            "ff_chunks",
            "head_chunks",
            "eval_pad_multiple",
        ):
            _check_positive(key, getattr(self, key))
        if not 0 <= self.pad_token < self.vocab_size:
            raise ConfigError(f"pad_token={self.pad_token} must be a token id in [0, vocab_size={self.vocab_size})")
        if self.eval_pad_min < 0:
            raise ConfigError(f"eval_pad_min={self.eval_pad_min} must be >= 0")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if self.reversible_readout == "concat" and not self.reversible:
            raise ConfigError("reversible_readout='concat' needs reversible: true (it reads out the two halves)")
        if self.reversible_readout == "concat" and self.tie_embeddings:
            raise ConfigError("reversible_readout='concat' has a (2 * d_model)-wide head; set tie_embeddings: false")
        if self.axial_dims is not None and (len(self.axial_dims) != 2 or sum(self.axial_dims) != self.d_model):
            raise ConfigError(f"axial_dims={self.axial_dims} must be two widths that sum to d_model={self.d_model}")
        if self.positions == "axial":
            if not self.axial_shape or _prod(self.axial_shape) < self.max_len:
                raise ConfigError(f"axial_shape={self.axial_shape} must multiply to at least max_len={self.max_len}")
        for kind in _REGISTERED:
            check_field_types(self.section(kind), prefix=f"{kind}.")

    # derived ------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def stateful(self) -> bool:
        """True when some layer carries memory across segments."""
        return any(_REGISTERED[kind].stateful for kind in self.layers if kind in _REGISTERED)

    # presets / files ----------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        cfg = cls.from_dict({**PRESETS[name], "name": name})
        return cfg.replace(**overrides) if overrides else cfg

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        cfg = dataclass_from_dict(cls, data)
        _warn_unused_sections(cfg, data)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        data = read_yaml(path)
        data = data.get("model", data)  # accept a run config with a `model:` section
        if "preset" in data:
            preset = data.pop("preset")
            return cls.from_name(preset).replace(**data)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; sections of mechanisms that no layer uses are left out to keep files short."""
        return self._as_dict([kind for kind in _REGISTERED if kind in self.layers])

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(self.to_text(), encoding="utf-8")

    def to_text(self) -> str:
        """The YAML text `to_file` writes; a ConfigError when it is over the cap that reading it back applies."""
        return dump_yaml(self.to_dict(), "the model config")

    def with_run_files(self, folder: str | Path) -> ModelConfig:
        """This config with each mechanism's own files kept under run `folder` (its registered ``run_files``)."""
        overrides = {}
        for kind in dict.fromkeys(self.layers):
            run_files = _REGISTERED[kind].run_files
            if run_files is not None:
                settings = run_files(self.section(kind), Path(folder))
                overrides.update({f"{kind}.{key}": value for key, value in settings.items()})
        return self.replace(**overrides) if overrides else self

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some keys changed; dotted keys (``"knn.memory_size"``) reach into a section."""
        data = self._as_dict(_REGISTERED)
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        # not from_dict: warn about the sections changed here, not older ones
        cfg = dataclass_from_dict(ModelConfig, data)
        _warn_unused_sections(cfg, {key.partition(".")[0] for key in overrides})
        return cfg


def _warn_unused_sections(cfg: ModelConfig, keys: Any) -> None:
    """Warn about sections among `keys` that were changed from their defaults although no layer uses them."""
    for key in keys:
        section = _REGISTERED.get(key)
        if section is not None and key not in cfg.layers and cfg.section(key) != section.cls():
            log.warning(
                "config section %r is set but no layer uses it (layers: %s); its settings have no effect",
                key,
                sorted(set(cfg.layers)),
            )


def check_run_config_sections(
    data: Any, allowed: tuple[str, ...] = ("model", "train", "data"), source: str = "config file"
) -> None:
    """Refuse a run config (``--config``) whose top level is not a mapping of known sections (``trian:``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping with sections {list(allowed)}, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown section {key!r} in {source}{hint}; allowed sections: {list(allowed)}")


def _prod(xs: list[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    head, _, rest = key.partition(".")
    if head not in data:
        raise ConfigError(f"unknown key {key!r}; allowed keys: {sorted(data)}")
    if rest:
        if not isinstance(data[head], dict):
            raise ConfigError(f"{head!r} has no sub-keys (got {key!r})")
        _set_dotted(data[head], rest, value)
    elif isinstance(data[head], dict) and isinstance(value, dict):
        for sub_key, sub_value in value.items():
            _set_dotted(data[head], sub_key, sub_value)
    else:
        data[head] = value


def dataclass_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping: unknown keys and values of the wrong type are refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    names = _config_keys(cls)
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"unknown key {prefix + str(unknown[0])!r}; allowed keys: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    # checked here too (not only in __post_init__) so the message carries the section's prefix; a
    # ModelConfig's sections are checked by the constructor
    return cls(
        **{key: _checked(prefix + key, value, hints[key]) if key in hints else value for key, value in data.items()}
    )


def _config_keys(cls: type) -> set[str]:
    """The keys a mapping for dataclass `cls` may hold: its fields (and, for a ModelConfig, the sections)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return names | set(_REGISTERED) if issubclass(cls, ModelConfig) else names


def check_field_types(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass `obj` against its declared type (see `_checked`); fix ints given for floats.

    Dataclasses call it first in ``__post_init__``, before any check that compares or computes with a value.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        checked = _checked(prefix + f.name, value, hints[f.name])
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def _checked(key: str, value: Any, hint: Any) -> Any:
    """`value` if it has type `hint` (an int given for a float becomes a float), else one `ConfigError` line.

    Types: bool, int, float, str, None, ``Literal``, ``list[...]`` (a tuple becomes a list; a bare string is
    not a list), ``X | Y`` and nested dataclasses; other hints (``Any``, ``dict``) are not checked.
    """
    ok, out = _match(value, hint)
    if ok:
        return out
    if typing.get_origin(hint) is Literal:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(get_args(hint))}")
    raise ConfigError(f"{key}={value!r} must be {_describe(hint)}")


def _match(value: Any, hint: Any) -> tuple[bool, Any]:
    if hint is Any:
        return True, value
    if hint is type(None) or hint is None:
        return value is None, value
    if hint is bool:  # YAML's true/false only: "no", "abc" or 1 are not booleans
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, float(value)
        return isinstance(value, float), value
    if hint is str:
        return isinstance(value, str), value
    origin = typing.get_origin(hint)
    if origin is Literal:  # the type too: True == 1 must not pass for a Literal[1]
        return any(value == c and type(value) is type(c) for c in get_args(hint)), value
    if origin in (typing.Union, types.UnionType):
        for arm in get_args(hint):
            ok, out = _match(value, arm)
            if ok:
                return True, out
        return False, value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = get_args(hint) or (Any,)
        items = [_match(v, arg) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        out = [v for _, v in items]
        return True, value if isinstance(value, list) and all(a is b for a, b in zip(out, value, strict=True)) else out
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):  # a section: its instance or its mapping
        return isinstance(value, (hint, dict)), value
    return True, value


def _describe(hint: Any) -> str:
    """English for a type hint, as error messages use it: ``int | None`` -> "an integer or null"."""
    if hint is type(None) or hint is None:
        return "null"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(get_args(hint))}"
    if origin in (typing.Union, types.UnionType):
        arms = sorted(get_args(hint), key=lambda a: a is type(None))  # null last
        return " or ".join(_describe(a) for a in arms)
    if origin is list:
        (arg,) = get_args(hint) or (Any,)
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(arg, _describe(arg))}"
    return getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------- YAML

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; the cap keeps a hostile file from costing memory


class _ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses anchors and aliases and reads ``1e-3`` as a number.

    Configs never need anchors: refusing them outright is what makes an alias bomb (nested aliases
    expand exponentially when the document is constructed) cost nothing. PyYAML follows YAML 1.1,
    where a float needs a dot (``1e-3`` is a string); YAML 1.2 and every user read it as a number.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise _AnchorRefused(f"anchors and aliases (&, *) are not allowed (line {mark.line + 1})")
        return super().compose_node(parent, index)


class _AnchorRefused(yaml.YAMLError):
    pass


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def dump_yaml(data: Any, what: str) -> str:
    """`data` as the YAML text of a config file (UTF-8, not escaped); a ConfigError when that text is over
    `MAX_CONFIG_BYTES`, the cap that reading a config applies, so that no run writes a config it cannot read back
    (a config just under the cap can grow when written: flow lists become one line per item, escapes expand)."""
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    size = len(text.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what} would be {size:,} bytes written, over the {MAX_CONFIG_BYTES:,} a config may hold (what reading "
            "it back allows); shorten its longest values"
        )
    return text


def load_yaml_text(text: str, source: str = "YAML text") -> Any:
    """Parse YAML `text` (a config file, a ``--set`` value) safely; `source` names it in errors.

    Refuses texts over `MAX_CONFIG_BYTES`, anchors and aliases, and tags that build Python objects;
    every refusal is one `ConfigError` line.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text)} bytes; a config holds at most {MAX_CONFIG_BYTES}")
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not a valid config: {' '.join(str(err).split())}") from err
    except RecursionError as err:  # PyYAML composes nested lists and mappings recursively: [[[[...]]]]
        raise ConfigError(f"{source} is nested too deeply to be a config") from err


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file `path` (``--config``, a checkpoint's ``config.yaml``, ``train.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is {size} bytes; a config holds at most {MAX_CONFIG_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from err
    data = load_yaml_text(text, f"config file {str(path)!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


# --------------------------------------------------------------------------- presets

# Sizes: tiny = tests (seconds), small = CPU minutes, base = GPU.
_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "n_heads": 2, "n_layers": 2, "segment_len": 64},
    "small": {"d_model": 256, "n_heads": 4, "n_layers": 4, "segment_len": 256},
    "base": {"d_model": 512, "n_heads": 8, "n_layers": 12, "segment_len": 512},
}


def _preset(kind_of_layer: Any, size: str, **extra: Any) -> dict[str, Any]:
    s = dict(_SIZES[size])
    n_layers = s.pop("n_layers")
    layers = [kind_of_layer(i, n_layers) for i in range(n_layers)]
    return {**s, "layers": layers, **extra}


def _memorizing_layers(i: int, n: int) -> str:
    # paper: kNN memory at layer 9 of 12, i.e. three quarters of the way up
    return "knn" if i == max(min(1, n - 1), (3 * n) // 4 - 1) else "xl"


PRESETS: dict[str, dict[str, Any]] = {}
for _size in _SIZES:
    _seg = _SIZES[_size]["segment_len"]
    PRESETS[f"transformer-{_size}"] = _preset(lambda i, n: "full", _size)
    PRESETS[f"transformer-xl-{_size}"] = _preset(lambda i, n: "xl", _size, xl={"mem_len": _seg})
    PRESETS[f"memorizing-{_size}"] = _preset(
        _memorizing_layers,
        _size,
        xl={"mem_len": _seg},
        knn={"mem_len": _seg, "memory_size": {"tiny": 1024, "small": 8192, "base": 65536}[_size]},
    )
    # the same reach as transformer-xl-{size} (mem_len = segment_len = M tokens back per layer): M / 2 states plus
    # M / 8 slots of rate 4 (M / 2 + 4 * M / 8 = M tokens) in 5M / 8 slots, so the two train at the same span
    # (`longrange bench train --presets transformer-xl-small,compressive-small`); for the paper's setting (the
    # same slots, a longer reach: M / 2 + M / 2 x 4) override compressive.cmem_len, as `repro compression` does
    PRESETS[f"compressive-{_size}"] = _preset(
        lambda i, n: "compressive",
        _size,
        compressive={"mem_len": _seg // 2, "cmem_len": _seg // 8, "rate": 4},
    )
    PRESETS[f"luna-{_size}"] = _preset(
        lambda i, n: "luna",
        _size,
        positions="sinusoidal",
        luna={"proj_len": 16, "chunk_len": 32} if _size != "base" else {"proj_len": 128, "chunk_len": 64},
    )
    PRESETS[f"reformer-{_size}"] = _preset(
        lambda i, n: "lsh" if i % 2 else "local",
        _size,
        segment_len=_seg * 16,
        positions="axial",
        max_len=65536,
        axial_shape=[256, 256],
        reversible=True,
        # n_buckets fixed at the paper's 2 * T / bucket_size for the training length T (not null), so
        # the bucket count does not depend on the call's length and generation can use decode caches
        lsh={
            "n_hashes": 4 if _size != "tiny" else 2,
            "bucket_size": 64 if _size != "tiny" else 16,
            "n_buckets": 2 * (_seg * 16) // (64 if _size != "tiny" else 16),
        },
        local={"chunk_len": 64 if _size != "tiny" else 16},
    )


def preset_names() -> list[str]:
    return sorted(PRESETS)


def register_preset(name: str, data: dict[str, Any]) -> None:
    """Add a named preset (a mapping of ModelConfig keys); ``<system>-<size>`` also makes it a `compare` system."""
    ModelConfig.from_dict({**data, "name": name})  # a bad preset is refused now, not at its first use
    PRESETS[name] = dict(data)
