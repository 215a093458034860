"""Memory per GPU and communication per rank of a planned job, from formulas (no process, no model).

Symbols: P parameters of one DiT (`wan_parameter_count`, exact for `WanDiT`), P_b of one block,
L blocks, d = model width, f = FFN width, W world size, cp = U x R context-parallel degree
(Ulysses x ring), T teacher shard degree, b bytes per activation / trainable weight (2 for
train.precision=bf16, 4 for fp32), b_t bytes per teacher weight (model.dtype), m micro-batch.
Token counts: teacher and critic see S = parallel.teacher_num_frames x frame_seq_len tokens,
sharded over cp (s = ceil(S / cp) per rank); the student keeps activations for
parallel.student_num_frames x frame_seq_len tokens, unsharded.

Memory per GPU (docs/method.md, distribution at full scale):
- student, critic model states: 16 P / W (bf16: weight 2 + grad 2 + fp32 master 4 + Adam 8;
  fp32: weight 4 + grad 4 + Adam 8; ZeRO-3 over all W ranks), plus two gathered blocks
  (the one running and the one prefetched): 2 P_b b. (ds_configs/zero3.json; the offload
  variant moves the 16 P / W to host memory.)
- teacher: P b_t / T, plus one gathered block P_b b_t when T > 1.
- activations, the largest of the three phases (they run one after another). A context-parallel
  rank embeds, runs and heads only its own s tokens (context_parallel.py): nothing of width d
  covers the whole sequence; only the output latents, o = ph x pw x C values per token, are
  gathered. Counted on the code, per rank:
  teacher forward (no grad), the largest of
    a block's FFN: s (9 d + 2 f) b: the embedded tokens, the block's input, the attention
      output, its k and v, the residual stream, the FFN input and two modulations (9 d-wide),
      the FFN hidden before and after GELU (2 f-wide);
    a block's attention: s 8 d b (embedded, input, normed, q, k, v, rotated q and k) plus the
      attention working set: Ulysses' head-sharded q, k, v, out 4 (S / R)(d / U) b and one
      all-to-all's send and receive buffers 2 s d b; with a ring, the visiting k, v and the
      ones arriving 4 (S / R)(d / U) b and three float32 score matrices of
      `ring.SCORE_ELEMENTS` each at most;
    the output head: s 5 d b (hidden, normed, scale, shift, product) and the output latents,
      this rank's and the gathered and unpatchified whole (s + 2 S) o b;
  plus per-token RoPE angles s head_dim x 4 (float32) and per-frame modulation F 13 d x 4.
  Critic and student training: with activation checkpointing the L block inputs L s d b plus
  one block being recomputed s (16 d + 2 f) b (without: L s (16 d + 2 f) b), plus the same
  attention working set and output latents; with a ring, autograd also keeps, per ring step,
  the visiting k, v and the online softmax's float32 partials, R (2 b + 3 x 4)(S / R)(d / U)
  per block kept, and the backward recomputes one query chunk's scores at a time (four float32
  matrices of at most `ring.SCORE_ELEMENTS`); all times m.
  Local attention is assumed O(tokens) in memory (flash / memory-efficient kernels); a dense
  SDPA mask or score matrix would add S^2 terms.
- KV: the student's memory cache, capacity frames x frame_seq_len x 2 (K, V) x d x L x b x m
  (docs/method.md, Slow-Fast Memory: 6.0 GB for 21 frames at 480x832 in bf16).

Communication per rank per micro-step (bytes received; a ring step sends as much as it gets):
- ZeRO-3, each of student and critic: parameter all-gathers in forward, in backward and (with
  checkpointing) in recompute, and one gradient reduce-scatter: (3 or 2 + 1) P b (W - 1) / W.
- teacher parameters (T > 1): P b_t (T - 1) / T per teacher forward.
- Ulysses: 4 all-to-alls (q, k, v, out) per block, each s d b (U - 1) / U; the teacher runs
  forward only (x 1), the critic forward, recompute and backward (x 3, or x 2 unchecked).
- ring: per block (R - 1) shifts of k and v, 2 (S / R)(d / U) b each; backward sends the
  gradients back the same way.
- output latents: one all-gather S o b (cp - 1) / cp per forward; the critic's backward
  reduce-scatters as much again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ctxf.config import Config, ModelConfig
from ctxf.parallel.plan import ParallelPlan
from ctxf.parallel.ring import SCORE_ELEMENTS

STATE_BYTES_PER_PARAM = 16  # mixed-precision Adam, and fp32 Adam alike (see the module docstring)
LIVE_WIDTHS_FFN = (9, 2)  # (d-wide, f-wide) tensors per token alive in a no-grad block's FFN
LIVE_WIDTHS_ATTENTION = 8  # d-wide tensors per token alive around a no-grad block's attention
LIVE_WIDTHS_HEAD = 5  # d-wide tensors per token alive in the output head
SAVED_WIDTHS_TRAINING = (16, 2)  # (d-wide, f-wide) tensors per token a block keeps for its backward
LIVE_SCORE_MATRICES = 3  # ring attention: float32 score matrices of SCORE_ELEMENTS alive at once (forward)
BACKWARD_SCORE_MATRICES = 4  # ring attention backward: one chunk's recomputed scores, probabilities and their grads
RING_PARTIALS = 3  # float32 (S / R)(d / U) tensors the online softmax keeps per ring step for backward
FLOAT32 = 4  # RoPE angles, modulation and ring scores are float32 whatever the precision
MODULATION_WIDTHS = 13  # d-wide float32 tensors per frame: the six modulations, a block's table, the head's


def block_parameter_count(model: ModelConfig) -> int:
    d, f = model.dim, model.ffn_dim
    attention = 4 * (d * d + d) + 2 * d  # q, k, v, out projections and the two RMS norms
    return 2 * attention + 2 * d + (d * f + f + f * d + d) + 6 * d  # self + cross, norm2, ffn, modulation


def wan_parameter_count(model: ModelConfig) -> int:
    """Parameters of `WanDiT(model)`, exactly (tests compare it with the real module)."""
    d, patch = model.dim, math.prod(model.patch_size)
    stem = (model.in_channels * d * patch + d  # patch embedding
            + model.freq_dim * d + d + d * d + d  # timestep embedding MLP
            + 6 * d * d + 6 * d  # timestep projection to the six modulations
            + model.text_dim * d + d + d * d + d  # text projection MLP
            + d * model.out_channels * patch + model.out_channels * patch + 2 * d)  # output head, modulation
    return stem + model.num_layers * block_parameter_count(model)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU."""

    student: float
    critic: float
    teacher: float
    activations: float
    kv_cache: float
    teacher_forward_activations: float
    critic_activations: float
    student_activations: float

    @property
    def total(self) -> float:
        return self.student + self.critic + self.teacher + self.activations + self.kv_cache


@dataclass(frozen=True)
class CommunicationEstimate:
    """Bytes per rank per micro-step."""

    student_zero: float
    critic_zero: float
    teacher_gather: float
    teacher_context_parallel: float
    critic_context_parallel: float

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def _bytes(config: Config) -> tuple[int, int]:
    """(activation and trainable-weight bytes, teacher-weight bytes)."""
    return (2 if config.train.precision == "bf16" else 4), (2 if config.model.dtype == "bfloat16" else 4)


def _token_counts(config: Config, parallel_plan: ParallelPlan) -> tuple[int, int, int]:
    """(teacher sequence S, teacher tokens per rank s, student tokens)."""
    return (parallel_plan.teacher_num_tokens, parallel_plan.teacher_tokens_per_rank,
            config.parallel.student_num_frames * config.frame_seq_len)


def _output_values(model: ModelConfig) -> int:
    """o: output latent values per token (ph x pw x C), what context parallelism gathers."""
    _, patch_h, patch_w = model.patch_size
    return patch_h * patch_w * model.out_channels


def _score_matrix_bytes(sequence: int, parallel_plan: ParallelPlan, num_heads: int) -> float:
    """One float32 ring score matrix as ring.py sizes it: [H / U, chunk, S / R], chunk <= S / R queries."""
    shard = math.ceil(sequence / parallel_plan.ring_degree)
    heads = num_heads // parallel_plan.ulysses_degree
    queries = min(shard, max(1, SCORE_ELEMENTS // (heads * shard)))
    return heads * queries * shard * FLOAT32


def _attention_working_set(sequence: int, tokens_per_rank: int, parallel_plan: ParallelPlan, model: ModelConfig,
                           act: int) -> float:
    """Ulysses' head-sharded q, k, v, out and an all-to-all's buffers; the ring's travelling k, v and scores."""
    u, r, dim = parallel_plan.ulysses_degree, parallel_plan.ring_degree, model.dim
    head_sharded = math.ceil(sequence / r) * dim / u * act
    working = 4 * head_sharded + (2 * tokens_per_rank * dim * act if u > 1 else 0)
    if r > 1:
        working += 4 * head_sharded + LIVE_SCORE_MATRICES * _score_matrix_bytes(sequence, parallel_plan, model.num_heads)
    return working


def _ring_saved(sequence: int, parallel_plan: ParallelPlan, dim: int, act: int) -> float:
    """Bytes autograd keeps per block for the ring steps: visiting k, v and float32 partials (none without a ring)."""
    u, r = parallel_plan.ulysses_degree, parallel_plan.ring_degree
    if r == 1:
        return 0.0
    return r * (2 * act + RING_PARTIALS * FLOAT32) * math.ceil(sequence / r) * dim / u


def _per_rank_fixed(tokens_per_rank: int, num_frames: int, model: ModelConfig) -> float:
    """RoPE angles of this rank's tokens and the per-frame modulation (float32)."""
    return (tokens_per_rank * model.head_dim + num_frames * MODULATION_WIDTHS * model.dim) * FLOAT32


def _output_latents(tokens_per_rank: int, sequence: int, model: ModelConfig, act: int) -> float:
    """This rank's output latents, the gathered whole and its unpatchified copy."""
    return (tokens_per_rank + 2 * sequence) * _output_values(model) * act


def _teacher_forward(tokens_per_rank: int, sequence: int, num_frames: int, config: Config,
                     parallel_plan: ParallelPlan, act: int) -> float:
    m = config.model
    d_wide, f_wide = LIVE_WIDTHS_FFN
    ffn = tokens_per_rank * (d_wide * m.dim + f_wide * m.ffn_dim) * act
    attention = (LIVE_WIDTHS_ATTENTION * tokens_per_rank * m.dim * act
                 + _attention_working_set(sequence, tokens_per_rank, parallel_plan, m, act))
    head = LIVE_WIDTHS_HEAD * tokens_per_rank * m.dim * act + _output_latents(tokens_per_rank, sequence, m, act)
    return max(ffn, attention, head) + _per_rank_fixed(tokens_per_rank, num_frames, m)


def _training_activations(tokens_per_rank: int, sequence: int, num_frames: int, config: Config,
                          parallel_plan: ParallelPlan, act: int) -> float:
    m = config.model
    d_wide, f_wide = SAVED_WIDTHS_TRAINING
    one_block = tokens_per_rank * (d_wide * m.dim + f_wide * m.ffn_dim) * act
    ring = _ring_saved(sequence, parallel_plan, m.dim, act)
    if config.parallel.activation_checkpointing:
        kept = m.num_layers * tokens_per_rank * m.dim * act + one_block + ring
    else:
        kept = m.num_layers * (one_block + ring)
    recompute = 0.0
    if parallel_plan.ring_degree > 1:
        recompute = BACKWARD_SCORE_MATRICES * _score_matrix_bytes(sequence, parallel_plan, m.num_heads)
    return (kept + recompute + _attention_working_set(sequence, tokens_per_rank, parallel_plan, m, act)
            + _output_latents(tokens_per_rank, sequence, m, act) + _per_rank_fixed(tokens_per_rank, num_frames, m))


def estimate_memory(config: Config, parallel_plan: ParallelPlan) -> MemoryEstimate:
    m, par = config.model, config.parallel
    act, teacher_bytes = _bytes(config)
    params, block = wan_parameter_count(m), block_parameter_count(m)
    world, shards, micro = parallel_plan.world_size, parallel_plan.teacher_shard_degree, parallel_plan.micro_batch_size
    # ds_config.py caps ZeRO-3's gathered parameters at GATHERED_BLOCKS blocks (2: running + prefetched)
    states = STATE_BYTES_PER_PARAM * params / world + 2 * block * act
    teacher = params * teacher_bytes / shards + (block * teacher_bytes if shards > 1 else 0)

    sequence, per_rank, student_tokens = _token_counts(config, parallel_plan)
    teacher_forward = micro * _teacher_forward(per_rank, sequence, par.teacher_num_frames, config, parallel_plan, act)
    critic = micro * _training_activations(per_rank, sequence, par.teacher_num_frames, config, parallel_plan, act)
    unsharded = replace(parallel_plan, ulysses_degree=1, ring_degree=1)
    student = micro * _training_activations(student_tokens, student_tokens, par.student_num_frames, config,
                                            unsharded, act)

    capacity = config.memory_capacity_frames() or par.teacher_num_frames
    kv = micro * capacity * config.frame_seq_len * 2 * m.dim * m.num_layers * act
    return MemoryEstimate(student=states, critic=states, teacher=teacher,
                          activations=max(teacher_forward, critic, student), kv_cache=kv,
                          teacher_forward_activations=teacher_forward, critic_activations=critic,
                          student_activations=student)


def estimate_communication(config: Config, parallel_plan: ParallelPlan) -> CommunicationEstimate:
    m = config.model
    act, teacher_bytes = _bytes(config)
    params, world = wan_parameter_count(m), parallel_plan.world_size
    gathers = 3 if config.parallel.activation_checkpointing else 2
    zero = (gathers + 1) * params * act * (world - 1) / world
    shards = parallel_plan.teacher_shard_degree
    teacher_gather = params * teacher_bytes * (shards - 1) / shards

    sequence, per_rank, _ = _token_counts(config, parallel_plan)
    u, r = parallel_plan.ulysses_degree, parallel_plan.ring_degree
    ulysses = 4 * m.num_layers * per_rank * m.dim * act * (u - 1) / u
    ring = m.num_layers * (r - 1) * 2 * math.ceil(sequence / r) * m.dim / u * act
    cp = parallel_plan.context_parallel_degree
    output = sequence * _output_values(m) * act * (cp - 1) / cp
    passes = 3 if config.parallel.activation_checkpointing else 2
    micro = parallel_plan.micro_batch_size
    return CommunicationEstimate(
        student_zero=zero, critic_zero=zero, teacher_gather=teacher_gather,
        teacher_context_parallel=micro * (ulysses + ring + output),
        critic_context_parallel=micro * (passes * (ulysses + ring) + 2 * output))
