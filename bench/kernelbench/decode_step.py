"""The decode step of a Llama-2-7B-shaped model with and without adapters (the LoRA part run by
the v1 and by the v2 kernels, side by side): eager, synced per step, and replayed from a CUDA
graph where capture works."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from loraplex.engine.batch import ModelInput
from loraplex.engine.cuda_graphs import DecodeGraphRunner
from loraplex.forward_context import AttentionMeta, ForwardContext, LoraMeta
from loraplex.kernels.dispatch import get_ops
from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.lora.adapter import LORA_TARGETS
from loraplex.lora.weights import LoraWeights
from loraplex.model.config import ModelConfig
from loraplex.model.llama import LlamaForCausalLM

from .config import log
from .env import Env
from .lora_cases import fill_lora
from .timing import capture_graph


@dataclass
class StepResult:
    layers: int
    batch: int
    context: int
    adapters: int
    rank: int
    max_rank: int
    num_kv_blocks: int
    eager_base: float = math.nan
    eager_lora: float = math.nan  # *_lora: the v1 kernels, *_lora_v2: the v2 kernels
    eager_lora_v2: float = math.nan
    graph_base: float = math.nan
    graph_lora: float = math.nan
    graph_lora_v2: float = math.nan
    graph_note: str = ""
    engine_base: float = math.nan  # the engine's DecodeGraphRunner: copy-in + replay, synced
    engine_lora: float = math.nan
    engine_lora_v2: float = math.nan
    lora_bytes: int = 0  # real-rank A and B of every adapter used, all layers: read once
    engine_capture_s: float = math.nan
    lora_changes_logits: bool = False
    notes: list[str] = field(default_factory=list)


def build_model(cfg: ModelConfig, env: Env, max_positions: int) -> LlamaForCausalLM:
    """Random Llama (N(0, 0.02) weights, unit norms) allocated in the serving dtype on the device."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            model = LlamaForCausalLM(cfg, max_positions)
    finally:
        torch.set_default_dtype(previous)
    gen = env.gen(7)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.fill_(1.0)
        else:
            p.data.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def size_kv(cfg: ModelConfig, env: Env, batch: int, context: int) -> tuple[int, int, str]:
    """(num_kv_blocks, context, note): every sequence gets ``context`` tokens of cache, shrunk
    to what fits in free GPU memory (keeping a reserve for activations and graph pools)."""
    bs = env.grid.block_size
    per_seq = -(-context // bs)
    if env.device.type != "cuda":
        return batch * per_seq + 1, context, ""
    free = torch.cuda.mem_get_info(env.device)[0] - (4 << 30)
    fit = max(free, 0) // PagedKVCache.bytes_per_block(cfg, bs, env.dtype)
    if fit >= batch * per_seq + 1:
        return batch * per_seq + 1, context, ""
    per_seq = (fit - 1) // batch
    if per_seq < 1:
        raise RuntimeError("no room for the KV cache: lower --layers, --batch or --max-rank")
    note = f"context cut from {context} to {per_seq * bs} tokens to fit the KV cache in memory"
    return batch * per_seq + 1, per_seq * bs, note


def decode_inputs(
    env: Env, batch: int, context: int, num_blocks: int, n_adapters: int, active: bool
) -> tuple[torch.Tensor, torch.Tensor, ForwardContext]:
    """One new token per sequence at position context-1, blocks scattered at random."""
    dev, bs, gen = env.device, env.grid.block_size, env.gen(11)
    per_seq = -(-context // bs)
    perm = torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(env.args.seed))
    tables = (perm[: batch * per_seq] + 1).view(batch, per_seq)
    pos = context - 1
    slot_mapping = tables[:, pos // bs] * bs + pos % bs
    attn = AttentionMeta(
        is_prefill=False,
        slot_mapping=slot_mapping.to(dev, torch.int64),
        cu_seqlens=[],
        block_tables=tables.to(dev, torch.int32),
        context_lens=torch.full((batch,), context, dtype=torch.int32, device=dev),
    )
    indices = torch.arange(batch, dtype=torch.int32, device=dev) % n_adapters
    lora = LoraMeta(active, False, None, None, indices)
    ids = torch.randint(0, env.cfg.vocab_size, (batch,), generator=gen, device=dev)
    positions = torch.full((batch,), pos, dtype=torch.int64, device=dev)
    return ids, positions, ForwardContext(attn, lora)


def adapter_bytes(cfg: ModelConfig, rank: int, adapters: int, elem: int) -> int:
    """Bytes of ``adapters`` rank-``rank`` adapters on every target of every layer."""
    per_rank = sum(sum(cfg.module_shape(t)) for t in LORA_TARGETS)  # in + out per target
    return per_rank * rank * cfg.num_layers * adapters * elem


def bench_decode(env: Env) -> StepResult:
    a = env.args
    cfg = env.cfg
    model = build_model(cfg, env, max_positions=a.context_len + 16)
    lora = LoraWeights(cfg, a.decode_adapters, env.grid.max_rank, env.dtype, env.device)
    fill_lora(lora, [a.decode_rank] * a.decode_adapters, cfg, env.gen(5))
    num_blocks, context, note = size_kv(cfg, env, a.batch, a.context_len)
    kv = PagedKVCache(cfg, num_blocks, env.grid.block_size, env.dtype, env.device)
    kv.data.normal_(0.0, 1.0, generator=env.gen(9))
    res = StepResult(
        cfg.num_layers,
        a.batch,
        context,
        a.decode_adapters,
        a.decode_rank,
        env.grid.max_rank,
        num_blocks,
        notes=[note] if note else [],
        lora_bytes=adapter_bytes(cfg, a.decode_rank, min(a.decode_adapters, a.batch), env.elem),
    )
    logits_index = torch.arange(a.batch, device=env.device)
    ops_v1, ops_v2 = get_ops(env.device, "v1"), get_ops(env.device, "v2")

    def step(active: bool, ops=ops_v1) -> Callable[[], torch.Tensor]:  # type: ignore[no-untyped-def]
        ids, pos, ctx = decode_inputs(env, a.batch, context, num_blocks, a.decode_adapters, active)

        def run() -> torch.Tensor:
            # A new LoraMeta per step, as the engine builds: per-step work (v2's decode plan)
            # is timed once per step, not cached across the timed runs.
            step_ctx = ForwardContext(ctx.attn, dataclasses.replace(ctx.lora))
            hidden = model(ids, pos, step_ctx, kv.layers, lora, ops)  # type: ignore[arg-type]
            return model.compute_logits(hidden[logits_index])

        return run

    with torch.inference_mode():
        base, with_lora, with_v2 = step(False), step(True), step(True, ops_v2)
        out_base, out_lora, out_v2 = base(), with_lora(), with_v2()
        if not all(torch.isfinite(o).all() for o in (out_base, out_lora, out_v2)):
            res.notes.append("non-finite logits")
        res.lora_changes_logits = bool((out_base != out_lora).any())
        if not torch.allclose(out_v2.float(), out_lora.float(), atol=0.1, rtol=0.05):
            err = (out_v2.float() - out_lora.float()).abs().max().item()
            res.notes.append(f"v2 logits differ from v1's (max abs {err:.3g})")
        res.eager_base, res.eager_lora, res.eager_lora_v2 = env.timer.time_synced(
            [base, with_lora, with_v2], a.step_iters
        )
        log(
            f"  decode eager: base {res.eager_base * 1e3:.2f} ms, lora v1 "
            f"{res.eager_lora * 1e3:.2f} ms, v2 {res.eager_lora_v2 * 1e3:.2f} ms"
        )
        if env.device.type == "cuda" and a.graphs:
            try:
                g_base, g_lora = capture_graph(base), capture_graph(with_lora)
                g_v2 = capture_graph(with_v2)
                res.graph_base = env.timer.time(g_base, flush=False, graph=False).seconds
                res.graph_lora = env.timer.time(g_lora, flush=False, graph=False).seconds
                res.graph_lora_v2 = env.timer.time(g_v2, flush=False, graph=False).seconds
                log(
                    f"  decode graph: base {res.graph_base * 1e3:.2f} ms, "
                    f"lora v1 {res.graph_lora * 1e3:.2f} ms, v2 {res.graph_lora_v2 * 1e3:.2f} ms"
                )
            except Exception as e:  # noqa: BLE001 - report, keep the eager numbers
                res.graph_note = f"capture failed: {type(e).__name__}: {str(e)[:160]}"
                log(f"  decode graph {res.graph_note}")
        else:
            res.graph_note = "not run (CPU)" if env.device.type != "cuda" else "--no-graphs"
        if env.device.type != "cuda" or a.graphs:
            try:
                bench_engine_graphs(env, res, model, kv, lora, context, num_blocks)
            except Exception as e:  # noqa: BLE001 - report, keep the other numbers
                res.graph_note += f" engine graphs failed: {type(e).__name__}: {str(e)[:160]}"
                log(f"  engine graphs failed: {e}")
    return res


def bench_engine_graphs(
    env: Env,
    res: StepResult,
    model: LlamaForCausalLM,
    kv: PagedKVCache,
    lora: LoraWeights,
    context: int,
    num_blocks: int,
) -> None:
    """The step as the engine runs it on CUDA: ``DecodeGraphRunner`` copies the batch into its
    static buffers and replays the captured graph; then logits.  Host time included.  On CPU
    (``--smoke``) the same static path runs eagerly.  One runner per LoRA kernel generation."""
    a = env.args
    per_seq = -(-context // env.grid.block_size)
    runners = []
    for kernel in ("v1", "v2"):
        ops = get_ops(env.device, kernel)
        runner = DecodeGraphRunner(
            model, kv, lora, ops, a.batch, per_seq, env.device, env.device.type == "cuda"
        )
        res.engine_capture_s = runner.capture()
        runners.append(runner)

    def step(active: bool, runner: DecodeGraphRunner) -> Callable[[], torch.Tensor]:
        ids, pos, ctx = decode_inputs(env, a.batch, context, num_blocks, a.decode_adapters, active)
        logits_index = torch.arange(a.batch, device=env.device)
        inp = ModelInput([None] * a.batch, ids, pos, logits_index, ctx)  # type: ignore[list-item]
        return lambda: model.compute_logits(runner.run(inp))

    v1, v2 = runners
    res.engine_base, res.engine_lora, res.engine_lora_v2 = env.timer.time_synced(
        [step(False, v1), step(True, v1), step(True, v2)], a.step_iters
    )
    log(
        f"  engine graphs: base {res.engine_base * 1e3:.2f} ms, lora v1 "
        f"{res.engine_lora * 1e3:.2f} ms, v2 {res.engine_lora_v2 * 1e3:.2f} ms"
        f" (capture {res.engine_capture_s:.1f} s per kernel)"
    )
