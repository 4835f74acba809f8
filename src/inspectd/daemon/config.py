"""The typed, validated configuration.

Unknown keys are errors, values are range-checked, and every error names the key path, the YAML line, what was
wrong and what was expected, e.g.

    config.yaml:7: camera.rate_hz: Input should be less than or equal to 1000 (got 5000)

Relative paths are taken relative to the config file's directory. Loading does no I/O beyond reading the file;
`check_runtime()` (used by `inspectd check-config` and at start-up) additionally opens the model's manifest.
"""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from inspectd.core.errors import ConfigError
from inspectd.core.schema import ConfigPath, StrictModel
from inspectd.daemon.cameras import CAMERA_TYPES, CameraConfigBase
from inspectd.daemon.checks import check_paths
from inspectd.daemon.pipeline import Overrun
from inspectd.daemon.web.config import HttpConfig
from inspectd.feedback.config import ControlConfig, FeedbackConfig, RejectsConfig
from inspectd.inspection.detector import DEFAULT_PROVIDERS
from inspectd.plc.config import PlcConfig

if TYPE_CHECKING:  # the checker sees the common base; pydantic sees the union of every registered type
    CameraConfig = CameraConfigBase
else:
    CameraConfig = Annotated[
        Union[tuple(cfg for cfg, _ in CAMERA_TYPES.values())],  # noqa: UP007 - built from the registry
        Field(discriminator="type", description="the image source; `type:` selects one of the camera types"),
    ]

KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)


class ModelConfig(StrictModel):
    path: ConfigPath = Field(Path("models/demo"), description="model directory with model.onnx and manifest.json")
    providers: tuple[str, ...] = Field(
        DEFAULT_PROVIDERS, min_length=1, description="onnxruntime execution providers in order of preference"
    )
    require_gpu: bool = Field(False, description="refuse to start unless a GPU provider is obtained")
    pixel_threshold: float | None = Field(
        None, ge=0, le=2, description="override the manifest's calibrated pixel threshold (difference-map units)"
    )
    min_region_area: int | None = Field(
        None, ge=1, le=100_000_000, description="override the manifest's minimum defect region area (frame pixels)"
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "intra_op_threads" in data:
            msg = "model.intra_op_threads moved to pipeline.threads.onnxruntime (with pipeline.threads.numba beside it)"
            raise ValueError(msg)
        return data

    @field_validator("providers")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for p in value:
            if p not in KNOWN_PROVIDERS:
                close = difflib.get_close_matches(p, KNOWN_PROVIDERS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                msg = f"unknown provider {p!r}{hint}; expected some of {list(KNOWN_PROVIDERS)}"
                raise ValueError(msg)
        return value


class ThreadsConfig(StrictModel):
    onnxruntime: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "onnxruntime intra-op threads; 0 = automatic: every usable core (the usable cores minus "
            "pipeline.threads.numba when that is set)"
        ),
    )
    numba: int = Field(
        0,
        ge=0,
        le=256,
        description="threads of the SSIM kernel; 0 = automatic: a quarter of the usable cores (at least 1)",
    )


class PipelineConfig(StrictModel):
    queue_size: int = Field(4, ge=1, le=1024, description="frames waiting for inference before an overrun")
    overrun: Overrun = Field(
        "auto",
        description=(
            "when the queue is full: error = the new frame gets an ERROR verdict (live line: the item cannot wait); "
            "block = acquisition waits (replay sources); auto = error for live cameras on a free-run clock, "
            "block for files and for rate_hz 0"
        ),
    )
    drain_timeout_s: float = Field(
        10.0, gt=0, le=300, description="on stop, how long to wait for queued frames to get their verdicts"
    )
    threads: ThreadsConfig = Field(default_factory=ThreadsConfig)


class LoggingConfig(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="lowest level written")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="json lines, or readable console; auto = console on a TTY, json otherwise"
    )
    verdicts: Literal["all", "rejects", "none"] = Field(
        "all", description="which verdicts get a log event (errors are always logged)"
    )


class ServiceConfig(StrictModel):
    status_interval_s: float = Field(
        5.0, gt=0, le=3600, description="how often the frame rate is reported (sd_notify STATUS= and a log event)"
    )


class Config(StrictModel):
    line: str = Field("line-1", min_length=1, max_length=64, description="name of this line PC, in logs and records")
    camera: CameraConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    plc: PlcConfig | None = Field(
        None, description="the PLC link over Modbus TCP (see `plc.*` below); absent = no PLC link"
    )
    rejects: RejectsConfig | None = Field(None, description="the on-disk store of recent rejects; absent = none kept")
    feedback: FeedbackConfig | None = Field(
        None, description="spool and collector for marked rejects (needs `rejects:`); absent = marks are refused"
    )
    control: ControlConfig | None = Field(None, description="the control socket of `inspectd mark`; absent = none")
    http: HttpConfig | None = Field(
        None, description="the HTTP endpoint: /metrics, /healthz, /readyz and the recheck station; absent = none"
    )

    @model_validator(mode="after")
    def _plc_trigger_needs_plc(self) -> Config:
        if self.camera.trigger == "plc" and self.plc is None:
            msg = "camera.trigger is plc, but there is no `plc:` section (the Modbus link that carries the triggers)"
            raise ValueError(msg)
        client = self.plc.client if self.plc is not None and self.plc.mode == "client" else None
        if self.camera.trigger == "plc" and client is not None and client.read_address is None:
            msg = "camera.trigger is plc, but plc.client.read_address is null (where the PLC's triggers are read)"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _station_needs_rejects(self) -> Config:
        if self.http is not None and self.http.station is not None and self.rejects is None:
            msg = "there is an `http.station` section but no `rejects:` section (the station shows stored rejects)"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _feedback_needs_rejects(self) -> Config:
        if self.feedback is not None and self.rejects is None:
            msg = "there is a `feedback:` section but no `rejects:` section (marks are made on stored rejects)"
            raise ValueError(msg)
        return self


# --- YAML with line numbers -------------------------------------------------------------------------------


def _line_map(text: str, source: str) -> dict[tuple, int]:
    """Map each key path (tuple of keys/indices) to its 1-based line; reject duplicate keys."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        msg = f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        raise ConfigError(msg) from exc
    lines: dict[tuple, int] = {}
    if root is None:
        return lines
    lines[()] = root.start_mark.line + 1

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for knode, vnode in node.value:
                key = knode.value
                line = knode.start_mark.line + 1
                if key in seen:
                    msg = (
                        f"{source}:{line}: {'.'.join(map(str, (*path, key)))}: duplicate key (first at line "
                        f"{seen[key]})"
                    )
                    raise ConfigError(msg)
                seen[key] = line
                lines[(*path, key)] = line
                walk(vnode, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    walk(root, ())
    return lines


def _data_path(loc: tuple, data: Any) -> tuple:
    """Turn a pydantic error location into a key path in the YAML data (drop discriminated-union tags)."""
    path: list = []
    cur = data
    for part in loc:
        if isinstance(cur, dict):
            if part in cur:
                path.append(part)
                cur = cur[part]
            elif cur.get("type") == part:  # the tag pydantic inserts for a discriminated union member
                continue
            else:
                path.append(part)
                cur = None
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            path.append(part)
            cur = cur[part]
        else:
            path.append(part)
            cur = None
    return tuple(path)


def _allowed_keys(model_cls: type, path: tuple, data: Any) -> list[str]:
    """The keys a mapping at `path` may have (for 'unknown key' hints)."""
    cls = model_cls
    cur = data
    for part in path[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        cur = cur.get(part) if isinstance(cur, dict) else None
        if field is None:
            return []
        if part == "camera" and isinstance(cur, dict) and cur.get("type") in CAMERA_TYPES:
            cls = CAMERA_TYPES[cur["type"]][0]
            continue
        ann = field.annotation
        ann = next((a for a in getattr(ann, "__args__", ()) if hasattr(a, "model_fields")), ann)  # X | None
        found = ann if isinstance(ann, type) and hasattr(ann, "model_fields") else None
        if found is None:
            return []
        cls = found
    return sorted(getattr(cls, "model_fields", {}))


def _format_error(err: Any, data: Any, lines: dict[tuple, int], source: str) -> str:
    path = _data_path(tuple(err["loc"]), data)
    line = None
    probe = path
    while probe not in lines and probe:
        probe = probe[:-1]
    line = lines.get(probe)
    where = f"{source}:{line}" if line else source
    dotted = ".".join(str(p) for p in path) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(Config, path, data)
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1) if allowed else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where}: {dotted}: unknown key{hint} (expected one of: {', '.join(allowed)})"
    if kind == "missing":
        return f"{where}: {dotted}: required key is missing"
    got = err.get("input")
    got_txt = "" if isinstance(got, dict | list) else f" (got {got!r})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {dotted}: {msg}{got_txt}"


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        return _parse_config(text, source, base_dir)
    except RecursionError:  # YAML nested thousands deep: PyYAML recurses
        msg = f"{source}: not valid YAML: nested too deeply"
        raise ConfigError(msg) from None


def _parse_config(text: str, source: str, base_dir: Path | None) -> Config:
    lines = _line_map(text, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # compose already caught syntax errors; this is belt and braces
        msg = f"{source}: not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    if not isinstance(data, dict):
        msg = (
            f"{source}: the config must be a YAML mapping with at least a `camera:` section, got {type(data).__name__}"
        )
        raise ConfigError(msg)
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = sorted(
            (_format_error(e, data, lines, source) for e in exc.errors()),
            key=lambda text: (
                int(text[len(source) + 1 :].split(":", 1)[0]) if text[len(source) :].startswith(":") else 0
            ),
        )
        msg = "invalid configuration:\n  " + "\n  ".join(problems)
        raise ConfigError(msg) from exc


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; more is the wrong file


def read_config_text(path: Path) -> str:
    """The text of a config file. ConfigError for anything that is not a readable regular file of sensible size:
    a FIFO would block a plain read forever and /dev/zero never ends, so the file is opened non-blocking and
    checked before it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        msg = f"config file {path} does not exist (expected a YAML file such as the repository's config.yaml)"
        raise ConfigError(msg) from exc
    except OSError as exc:
        msg = f"config file {path} cannot be read: {exc}"
        raise ConfigError(msg) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file"
            )
            msg = f"config file {path} is {kind} (expected a YAML file such as the repository's config.yaml)"
            raise ConfigError(msg)
        if st.st_size > MAX_CONFIG_BYTES:
            msg = f"config file {path} is {st.st_size} bytes (limit {MAX_CONFIG_BYTES}): not a config file?"
            raise ConfigError(msg)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        msg = f"config file {path} cannot be read: {exc}"
        raise ConfigError(msg) from exc
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"config file {path} cannot be read: not UTF-8 text ({exc})"
        raise ConfigError(msg) from exc


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(read_config_text(path), source=str(path), base_dir=path.resolve().parent)


def check_runtime(cfg: Config) -> None:
    """Checks that need the filesystem (inspectd check-config): the model directory and its manifest (hash
    included), the camera's source, and every path the daemon writes (inspectd/daemon/checks.py)."""
    check_paths(cfg)
