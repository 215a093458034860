"""Typed configuration: dataclass schema, YAML presets shipped in the package, dotted overrides.

A config is built in three layers: dataclass defaults, then a preset (a YAML file in
`ctxf/configs/` named without its extension, or any YAML path), then `section.key=value`
overrides from the command line. Unknown keys and values of the wrong type are rejected while
loading; cross-field rules live in `Config.validate()` alone, so every entry point checks the
same things before any process group or model exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctxf.data.config import DataConfig
from ctxf.memory.policies import POLICY_BUILDERS, build_policy
from ctxf.parallel.config import ParallelConfig
from ctxf.stages.config import STAGE_NAMES, TEACHER_CONTEXTS, DistillConfig, TeacherStageConfig

PRESET_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "tiny"


class ConfigError(ValueError):
    """A configuration problem; the message names the field and how to fix it."""


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ModelConfig:
    num_heads: int = field(default=2, metadata=_help("attention heads per layer"))
    head_dim: int = field(default=16, metadata=_help("channels per head; dim = num_heads * head_dim"))
    num_layers: int = field(default=2, metadata=_help("transformer blocks"))
    ffn_dim: int = field(default=64, metadata=_help("hidden width of the feed-forward network"))
    freq_dim: int = field(default=32, metadata=_help("sinusoidal timestep embedding width"))
    text_dim: int = field(default=32, metadata=_help("width of the text-encoder embeddings"))
    in_channels: int = field(default=12, metadata=_help("latent channels in"))
    out_channels: int = field(default=12, metadata=_help("latent channels out"))
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2], metadata=_help("(t, h, w) patch"))
    eps: float = field(default=1e-6, metadata=_help("epsilon of the layer and RMS norms"))
    cross_attn_norm: bool = field(default=True, metadata=_help("layer norm before cross-attention"))
    rope_theta: float = field(default=10000.0, metadata=_help("RoPE base"))
    rope_max_positions: int = field(default=1024, metadata=_help("largest RoPE position per axis"))
    attention_backend: str = field(default="sdpa", metadata=_help("sdpa | flash | flex"))
    dtype: str = field(default="float32", metadata=_help("float32 | bfloat16 (bfloat16 on CUDA)"))

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclass
class VideoConfig:
    latent_height: int = field(default=8, metadata=_help("latent frame height"))
    latent_width: int = field(default=8, metadata=_help("latent frame width"))
    num_frames_per_block: int = field(default=3, metadata=_help("latent frames per causal chunk"))
    latent_fps: float = field(default=4.0, metadata=_help("latent frames per second of video"))
    video_fps: int = field(default=16, metadata=_help("frames per second of the decoded video"))

    def frame_seq_len(self, model: ModelConfig) -> int:
        """Tokens per latent frame after patchify (1560 for Wan2.1 at 480x832)."""
        _, patch_h, patch_w = model.patch_size
        return (self.latent_height // patch_h) * (self.latent_width // patch_w)


MEMORY_POLICIES = tuple(POLICY_BUILDERS)
PROMPT_SWITCH_MODES = ("recache", "keep", "flush")


@dataclass
class MemoryConfig:
    policy: str = field(default="slow_fast", metadata=_help(" | ".join(MEMORY_POLICIES)))
    num_sink_frames: int = field(default=3, metadata=_help("first frames kept forever"))
    num_fast_frames: int = field(default=6, metadata=_help("FIFO of the most recent frames"))
    num_slow_frames: int = field(default=12, metadata=_help("keyframe slots (slow_fast, uniform)"))
    surprise_threshold: float = field(
        default=0.95, metadata=_help("keep a frame as keyframe when cosine(mean key, last keyframe) < this")
    )
    uniform_stride: int = field(default=4, metadata=_help("uniform policy: keep one frame every N"))
    window_frames: int = field(
        default=21, metadata=_help("rolling / sink_local / infinity_rope: recent frames kept besides the sink")
    )
    rope_length: int = field(
        default=24, metadata=_help("bounded policies: RoPE time positions stay in [0, rope_length - 1]")
    )


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = field(default=1000, metadata=_help("flow-matching time scale"))
    shift: float = field(default=5.0, metadata=_help("timestep shift k in s' = k s / (1 + (k-1) s)"))
    denoising_steps: list[int] = field(
        default_factory=lambda: [1000, 750, 500, 250], metadata=_help("few-step sampling timesteps")
    )
    warp_denoising_steps: bool = field(default=True, metadata=_help("pass the steps through the shift"))
    context_noise: float = field(default=0.0, metadata=_help("timestep of the clean refresh pass"))


@dataclass
class CodecConfig:
    kind: str = field(default="pixel", metadata=_help("pixel (patchify only) | wan_vae"))
    pixel_patch: int = field(default=2, metadata=_help("pixel codec: RGB pixels folded per latent pixel"))
    vae_path: str = field(default="", metadata=_help("wan_vae: local AutoencoderKLWan directory"))


@dataclass
class TextConfig:
    kind: str = field(default="hashing", metadata=_help("hashing (tiny, no weights) | umt5 | embeddings"))
    encoder_path: str = field(default="", metadata=_help("umt5: local directory with tokenizer + encoder"))
    embeddings_path: str = field(default="", metadata=_help("embeddings: .safetensors or .npy file"))
    max_length: int = field(default=16, metadata=_help("text tokens (512 for umT5-xxl)"))
    seed: int = field(default=0, metadata=_help("hashing encoder: seed of its word table"))


@dataclass
class InferenceConfig:
    prompt: str = field(default="a red square drifts over a striped wall", metadata=_help("text prompt"))
    seconds: float = field(default=30.0, metadata=_help("seconds of video to generate"))
    seed: int = field(default=0, metadata=_help("noise seed"))
    batch_size: int = field(default=1, metadata=_help("videos generated side by side"))
    output_dir: str = field(default="outputs/generate", metadata=_help("where video and latents go"))
    prefix_latents: str = field(default="", metadata=_help("continue these latents (.npy/.safetensors)"))
    prefix_video: str = field(default="", metadata=_help("continue this video file (decoded with PyAV, encoded "
                                                         "through the codec)"))
    prefix_image: str = field(default="", metadata=_help("start from this image (the first latent frame)"))
    prompt_schedule: str = field(default="", metadata=_help("JSONL of {\"seconds\": S, \"prompt\": TEXT}: "
                                                            "switch prompts at these times"))
    prompt_switch: str = field(default="recache", metadata=_help("at a prompt switch the memory is recomputed "
                                                                 "under the new prompt (recache), kept as it is "
                                                                 "(keep) or emptied (flush)"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda"))
    checkpoint: str = field(default="", metadata=_help("student weights: diffusers dir, Wan file, or a training "
                                                       "step / run directory"))
    checkpoint_role: str = field(default="", metadata=_help("role taken from a training step: student, teacher, "
                                                            "critic; add _ema for its EMA (empty: the trained role)"))


@dataclass
class LoRAConfig:
    rank: int = field(default=0, metadata=_help("adapter rank on the trained role (0: train all weights)"))
    alpha: float = field(default=0.0, metadata=_help("adapter scale alpha (scaling alpha / rank; 0: alpha = rank)"))
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "ffn"],
                               metadata=_help("module-name patterns of the adapted linear layers"))


@dataclass
class TrainConfig:
    stage: str = field(default="teacher", metadata=_help(" | ".join(STAGE_NAMES)))
    num_steps: int = field(default=60, metadata=_help("optimizer steps of the run"))
    output_dir: str = field(default="outputs/train", metadata=_help("run directory: checkpoints, logs, samples"))
    init_checkpoint: str = field(default="", metadata=_help("weights the trained model starts from "
                                                            "(diffusers dir, Wan file or training step dir)"))
    log_every: int = field(default=5, metadata=_help("steps between console / TensorBoard scalars"))
    sample_every: int = field(default=30, metadata=_help("steps between logged samples (0: never)"))
    checkpoint_every: int = field(default=30, metadata=_help("steps between checkpoints (the last step always saves)"))
    keep_checkpoints: int = field(default=2, metadata=_help("complete checkpoints kept (older ones are deleted)"))
    max_bad_steps: int = field(default=3, metadata=_help("abort after this many non-finite steps in a row"))
    teacher_lr: float = field(default=1e-4, metadata=_help("stage-0 (teacher) AdamW learning rate"))
    teacher_betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_help("stage-0 betas"))
    ema_decay: float = field(default=0.0, metadata=_help("EMA of the trained weights (0: off)"))
    ema_start_step: int = field(default=0, metadata=_help("first step that updates the EMA"))
    global_batch_size: int = field(default=2, metadata=_help("samples per optimizer step over the whole job"))
    micro_batch_size: int = field(default=1, metadata=_help("samples per forward on one data-parallel rank"))
    precision: str = field(default="fp32", metadata=_help("fp32 | bf16 (bf16 needs CUDA or a recent CPU)"))
    student_lr: float = field(default=2e-6, metadata=_help("generator AdamW learning rate"))
    critic_lr: float = field(default=4e-7, metadata=_help("critic AdamW learning rate"))
    student_betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_help("generator betas"))
    critic_betas: list[float] = field(default_factory=lambda: [0.5, 0.95], metadata=_help("critic betas"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    grad_clip: float = field(default=2.0, metadata=_help("gradient norm clip"))
    seed: int = field(default=0, metadata=_help("global seed"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    text: TextConfig = field(default_factory=TextConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    teacher: TeacherStageConfig = field(default_factory=TeacherStageConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def frame_seq_len(self) -> int:
        return self.video.frame_seq_len(self.model)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Cross-field rules, in one place. Raises ConfigError naming the field and the fix."""
        m, v, mem, d = self.model, self.video, self.memory, self.diffusion
        _positive(self, ["model.num_heads", "model.head_dim", "model.num_layers", "model.ffn_dim",
                         "model.freq_dim", "model.text_dim", "model.in_channels", "model.out_channels",
                         "video.latent_height", "video.latent_width", "video.num_frames_per_block",
                         "text.max_length", "inference.batch_size"])
        if len(m.patch_size) != 3 or min(m.patch_size) < 1:
            raise ConfigError(f"model.patch_size={m.patch_size}: give three positive ints (t, h, w)")
        if m.patch_size[0] != 1:
            raise ConfigError("model.patch_size[0] must be 1: chunks and memory work in whole latent frames")
        if m.head_dim % 2 or m.head_dim < 6:
            raise ConfigError(f"model.head_dim={m.head_dim}: RoPE needs an even head_dim of at least 6")
        for name, size, patch in (("latent_height", v.latent_height, m.patch_size[1]),
                                  ("latent_width", v.latent_width, m.patch_size[2])):
            if size % patch:
                raise ConfigError(f"video.{name}={size} is not divisible by its patch size {patch}; "
                                  f"change video.{name} or model.patch_size")
        if m.attention_backend not in ("sdpa", "flash", "flex"):
            raise ConfigError(f"model.attention_backend={m.attention_backend!r}: choose sdpa, flash or flex")
        if m.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.dtype={m.dtype!r}: choose float32 or bfloat16")
        self._validate_memory()
        steps = d.denoising_steps
        if not steps or any(b >= a for a, b in zip(steps, steps[1:])) or steps[0] > d.num_train_timesteps \
                or steps[-1] <= 0:
            raise ConfigError(f"diffusion.denoising_steps={steps}: give strictly decreasing timesteps in "
                              f"(0, {d.num_train_timesteps}]")
        if d.shift <= 0:
            raise ConfigError(f"diffusion.shift={d.shift} must be positive (1.0 means no shift)")
        if self.codec.kind not in ("pixel", "wan_vae"):
            raise ConfigError(f"codec.kind={self.codec.kind!r}: choose pixel or wan_vae")
        if self.codec.kind == "pixel" and 3 * self.codec.pixel_patch ** 2 != m.in_channels:
            raise ConfigError(f"codec.pixel_patch={self.codec.pixel_patch} makes {3 * self.codec.pixel_patch ** 2} "
                              f"latent channels but model.in_channels={m.in_channels}; set one to match")
        if self.text.kind not in ("hashing", "umt5", "embeddings"):
            raise ConfigError(f"text.kind={self.text.kind!r}: choose hashing, umt5 or embeddings")
        if self.train.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision={self.train.precision!r}: choose fp32 or bf16 (fp16 is not supported)")
        _positive(self, ["train.global_batch_size", "train.micro_batch_size"])
        self._validate_training()
        self._validate_distill()
        self._validate_data()
        self._validate_inference()
        return self

    def _validate_inference(self) -> None:
        inf = self.inference
        if inf.seconds <= 0:
            raise ConfigError(f"inference.seconds={inf.seconds} must be positive")
        if inf.prompt_switch not in PROMPT_SWITCH_MODES:
            raise ConfigError(f"inference.prompt_switch={inf.prompt_switch!r}: choose one of "
                              f"{', '.join(PROMPT_SWITCH_MODES)}")
        prefixes = [name for name in ("prefix_latents", "prefix_video", "prefix_image") if getattr(inf, name)]
        if len(prefixes) > 1:
            raise ConfigError(f"{' and '.join('inference.' + name for name in prefixes)} are all set: give one "
                              f"prefix to continue")

    def _validate_memory(self) -> None:
        mem, v = self.memory, self.video
        if mem.policy not in MEMORY_POLICIES:
            raise ConfigError(f"memory.policy={mem.policy!r}: choose one of {', '.join(MEMORY_POLICIES)}")
        for name in ("num_sink_frames", "num_fast_frames", "num_slow_frames", "window_frames"):
            if getattr(mem, name) < 0:
                raise ConfigError(f"memory.{name}={getattr(mem, name)} must be >= 0")
        if mem.policy in ("slow_fast", "uniform") and mem.num_fast_frames < v.num_frames_per_block:
            raise ConfigError(f"memory.num_fast_frames={mem.num_fast_frames} must hold at least one chunk "
                              f"(video.num_frames_per_block={v.num_frames_per_block})")
        if mem.policy == "uniform" and mem.uniform_stride < 1:
            raise ConfigError(f"memory.uniform_stride={mem.uniform_stride} must be >= 1")
        if not -1.0 <= mem.surprise_threshold <= 1.0:
            raise ConfigError(f"memory.surprise_threshold={mem.surprise_threshold} is a cosine: keep it in [-1, 1]")
        policy = build_policy(mem)
        if policy.bounded_positions:
            needed = policy.capacity_frames + v.num_frames_per_block
            if mem.rope_length < needed:
                raise ConfigError(
                    f"memory.rope_length={mem.rope_length} is too short for policy {mem.policy}: the cache holds "
                    f"{policy.capacity_frames} frames plus a chunk of {v.num_frames_per_block}; "
                    f"set memory.rope_length >= {needed}")
            if mem.rope_length > self.model.rope_max_positions:
                raise ConfigError(f"memory.rope_length={mem.rope_length} exceeds model.rope_max_positions="
                                  f"{self.model.rope_max_positions}")

    def _validate_training(self) -> None:
        train, lora, teacher = self.train, self.lora, self.teacher
        if train.stage not in STAGE_NAMES:
            close = difflib.get_close_matches(train.stage, STAGE_NAMES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"train.stage={train.stage!r} is not a stage; choose one of "
                              f"{', '.join(STAGE_NAMES)}{hint}")
        _positive(self, ["train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                         "train.max_bad_steps", "teacher.num_target_frames", "teacher.slow_stride",
                         "teacher.num_error_bins", "teacher.error_buffer_size", "teacher.sample_steps"])
        if train.sample_every < 0:
            raise ConfigError(f"train.sample_every={train.sample_every} must be >= 0 (0: no samples)")
        if not 0.0 <= train.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={train.ema_decay} must be in [0, 1) (0 turns the EMA off)")
        if lora.rank < 0:
            raise ConfigError(f"lora.rank={lora.rank} must be >= 0 (0: no adapter)")
        if lora.rank and not lora.targets:
            raise ConfigError("lora.targets is empty; name the adapted layers, e.g. [to_q, to_k, to_v, to_out.0, ffn]")
        for name in ("num_sink_frames", "num_slow_frames", "num_recent_frames"):
            if getattr(teacher, name) < 0:
                raise ConfigError(f"teacher.{name}={getattr(teacher, name)} must be >= 0")
        for name in ("error_recycling_prob", "noise_error_prob", "caption_dropout"):
            if not 0.0 <= getattr(teacher, name) <= 1.0:
                raise ConfigError(f"teacher.{name}={getattr(teacher, name)} is a probability: keep it in [0, 1]")
        if train.stage == "teacher":
            frames = teacher.num_sink_frames + teacher.num_recent_frames + teacher.num_target_frames
            if self.data.num_frames and self.data.num_frames < frames:
                raise ConfigError(f"data.num_frames={self.data.num_frames} is shorter than the teacher's sequence "
                                  f"without slow context ({frames} = sink + recent + target); use longer windows "
                                  f"(or 0: whole clips)")

    def _validate_distill(self) -> None:
        """The distillation stages' sizes: whole chunks, a window inside every rollout, a bounded
        memory whose RoPE range holds the teacher's [memory | window] sequence."""
        train, dist, block = self.train, self.distill, self.video.num_frames_per_block
        if train.stage == "teacher":
            return
        _positive(self, ["distill.window_frames", "distill.generator_every", "distill.ode_solver_substeps"])
        names = ["window_frames", "prefix_frames"]
        if dist.prefix_frames < 0:
            raise ConfigError(f"distill.prefix_frames={dist.prefix_frames} must be >= 0 (0: no prefix)")
        if train.stage in ("context_dmd", "longlive"):
            names += ["min_rollout_frames", "rollout_frames_start", "rollout_frames_end"]
        for name in names:
            value = getattr(dist, name)
            if value % block:
                raise ConfigError(f"distill.{name}={value} is not a whole number of chunks of "
                                  f"video.num_frames_per_block={block}; use a multiple of {block}")
        if train.stage in ("context_dmd", "longlive"):
            if not dist.window_frames <= dist.min_rollout_frames <= dist.rollout_frames_start <= dist.rollout_frames_end:
                raise ConfigError(f"distill: need window_frames ({dist.window_frames}) <= min_rollout_frames "
                                  f"({dist.min_rollout_frames}) <= rollout_frames_start ({dist.rollout_frames_start}) "
                                  f"<= rollout_frames_end ({dist.rollout_frames_end})")
            if dist.rollout_growth_steps < 0:
                raise ConfigError(f"distill.rollout_growth_steps={dist.rollout_growth_steps} must be >= 0")
        if train.stage == "ode_init" and self.data.num_frames:
            raise ConfigError(f"data.num_frames={self.data.num_frames}: ode_init reads whole trajectories; set "
                              f"data.num_frames=0")
        if dist.teacher_context not in TEACHER_CONTEXTS:
            raise ConfigError(f"distill.teacher_context={dist.teacher_context!r}: choose one of "
                              f"{', '.join(TEACHER_CONTEXTS)}")
        if not 0 <= dist.min_timestep < dist.max_timestep <= self.diffusion.num_train_timesteps:
            raise ConfigError(f"distill.min_timestep={dist.min_timestep}, max_timestep={dist.max_timestep}: need "
                              f"0 <= min < max <= {self.diffusion.num_train_timesteps}")
        policy = build_policy(self.memory)
        if train.stage == "context_dmd" and dist.teacher_context == "memory" and policy.bounded_positions:
            needed = policy.capacity_frames + dist.window_frames
            if self.memory.rope_length < needed:
                raise ConfigError(f"memory.rope_length={self.memory.rope_length} cannot place the teacher's memory "
                                  f"context ({policy.capacity_frames} frames) before a window of "
                                  f"{dist.window_frames}: set memory.rope_length >= {needed}")

    def _validate_data(self) -> None:
        data = self.data
        for name in ("num_workers", "shuffle_buffer", "seed", "num_frames", "default_max_gap"):
            if getattr(data, name) < 0:
                raise ConfigError(f"data.{name}={getattr(data, name)} must be >= 0")
        block = self.video.num_frames_per_block
        if data.num_frames % block:
            raise ConfigError(f"data.num_frames={data.num_frames} is not a whole number of chunks of "
                              f"video.num_frames_per_block={block}; use a multiple of {block} (or 0: whole clips)")

    def memory_capacity_frames(self) -> int | None:
        """Largest number of latent frames the student's cache holds (None: unbounded)."""
        return build_policy(self.memory).capacity_frames


def _positive(cfg: Config, dotted: list[str]) -> None:
    for key in dotted:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")


# ----------------------------------------------------------------------------- loading

def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_path(preset: str) -> Path:
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {preset} does not exist")
        return path
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(available_presets())} "
                          f"(or pass a path to a .yaml file)")
    return path


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] | None = None,
                validate: bool = True) -> Config:
    """Defaults <- preset YAML <- `section.key=value` overrides, then `validate()`."""
    path = _preset_path(preset)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    cfg = load_config(base, validate=False) if base else Config()
    _merge(cfg, data, where=str(path))
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg.validate() if validate else cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML: 3, 0.5, true, [1, 2, 2], text)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. model.num_layers=4")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    _merge(cfg, nested, where="command line")


def _merge(obj: Any, data: dict, where: str, prefix: str = "") -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, list(names), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {dotted!r} ({where}){hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} is a section; give it a mapping, not {value!r} ({where})")
            _merge(current, value, where, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, _field_type(type(obj), key), dotted, where))


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, annotation: Any, dotted: str, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(annotation)):
            return None
        annotation, origin = options[0], typing.get_origin(options[0])
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{dotted} expects a list, got {value!r} ({where})")
        return [_coerce(v, item_type, f"{dotted}[{i}]", where) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{dotted} expects {annotation.__name__}, got {value!r} ({where})")


def describe_fields(cfg: Config | None = None) -> str:
    """Every key with its current value and help text, for `--help-config`."""
    cfg = cfg or Config()
    lines = []
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        lines.append(f"[{section.name}]")
        for f in dataclasses.fields(sub):
            lines.append(f"  {section.name}.{f.name} = {getattr(sub, f.name)!r}    # {f.metadata.get('help', '')}")
    return "\n".join(lines)
