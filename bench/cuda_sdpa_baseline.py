#!/usr/bin/env python3
"""PyTorch reference points for turbokv-cuda-bench, on the same GPU.

Times torch.nn.functional.scaled_dot_product_attention on FP16 for the decode
shapes turbokv-cuda-bench times (one query token per sequence, 8 kv heads,
GQA via enable_gqa), and, to put the encoder's cost in proportion, one
layer's prefill of 32K tokens for Llama-3-8B's shapes (hidden 4096, 32 query
heads, 8 kv heads, head_dim 128, MLP 14336): causal FP16 attention, plus the
layer's weight products in bf16 (QKV, output, gate+up, down). Norms, RoPE
and activations are left out, so the layer's real prefill is a little
longer than this sum. Times are medians of CUDA-event-timed calls after
warm-up. Decode calls are timed as turbokv-cuda-bench times them: behind a
spinning kernel (torch.cuda._sleep), so that the events time the GPU's work
and not the host's launch (sdpa_us); one call between events, launch
included (call_us); and replays of a CUDA graph of 20 calls divided by 20
(sustained_us). Each decode call reads caches rotated among several copies
when they would fit in L2. Optional: the C++ benchmark has its own FP16
baseline.

    python3 bench/cuda_sdpa_baseline.py [--quick] [--json FILE]
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F


HOLD_CYCLES = 100_000  # torch.cuda._sleep before a held call: about 50 us, longer than enqueueing the call


def median_ms(fn, reps=30, warmup=5, hold=False):
    for _ in range(warmup):
        fn(0)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if hold:
            torch.cuda._sleep(HOLD_CYCLES)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def graph_call_ms(fn, calls=20, reps=30):
    """Median time of one call of fn over replays of a CUDA graph of `calls` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    return median_ms(lambda i: graph.replay(), reps) / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.cuda.get_device_properties(0)
    l2 = getattr(dev, "L2_cache_size", 50 << 20)
    print(f"device: {dev.name}, torch {torch.__version__}")
    kv = 8
    shapes = [(b, c, hd, g) for hd in (64, 128) for g in (4, 8) for b in (1, 8, 64) for c in (4096, 32768, 131072)]
    if args.quick:
        shapes = [(8, 32768, 128, 4)]
    rows = []
    print(f"{'batch':>5} {'ctx':>7} {'hd':>3} {'gqa':>3} {'sdpa_us':>10} {'GB/s':>8} {'call_us':>8} {'sustained_us':>12}")
    for b, c, hd, g in shapes:
        cache_bytes = b * kv * c * hd * 2 * 2
        if cache_bytes > 0.6 * dev.total_memory:
            print(f"{b:5d} {c:7d} {hd:3d} {g:3d}  skipped: does not fit")
            continue
        copies = max(1, min(16, math.ceil(3 * l2 / cache_bytes)))
        ks = [torch.randn(b, kv, c, hd, device="cuda", dtype=torch.float16) for _ in range(copies)]
        vs = [torch.randn(b, kv, c, hd, device="cuda", dtype=torch.float16) for _ in range(copies)]
        q = torch.randn(b, kv * g, 1, hd, device="cuda", dtype=torch.float16)

        def run(i):
            F.scaled_dot_product_attention(q, ks[i % copies], vs[i % copies], enable_gqa=True)

        ms = median_ms(run, hold=True)
        call_ms = median_ms(run)
        sustained_ms = graph_call_ms(run)
        gbs = cache_bytes / (ms * 1e-3) / 1e9
        print(f"{b:5d} {c:7d} {hd:3d} {g:3d} {ms * 1e3:10.1f} {gbs:8.0f} {call_ms * 1e3:8.1f} {sustained_ms * 1e3:12.1f}",
              flush=True)
        rows.append({"batch": b, "ctx": c, "head_dim": hd, "gqa": g, "kv_heads": kv, "time_us": ms * 1e3, "gbs": gbs,
                     "call_us": call_ms * 1e3, "sustained_us": sustained_ms * 1e3})
        del ks, vs, q
        torch.cuda.empty_cache()

    # Prefill attention of one layer, 32K tokens, causal.
    n = 32768
    q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.float16)
    v = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.float16)
    prefill_ms = median_ms(lambda i: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), reps=10)
    print(f"prefill attention, 32K tokens causal, 32 q heads / 8 kv heads, hd 128: {prefill_ms * 1e3:.1f} us")
    del q, k, v
    x = torch.randn(n, 4096, device="cuda", dtype=torch.bfloat16)
    weights = [torch.randn(4096, 6144, device="cuda", dtype=torch.bfloat16),    # QKV
               torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16),    # output
               torch.randn(4096, 28672, device="cuda", dtype=torch.bfloat16),   # gate + up
               torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)]   # down
    h = torch.randn(n, 14336, device="cuda", dtype=torch.bfloat16)

    def linears(i):
        torch.mm(x, weights[0])
        torch.mm(x, weights[1])
        torch.mm(x, weights[2])
        torch.mm(h, weights[3])

    linear_ms = median_ms(linears, reps=10)
    print(f"prefill weight products, 32K tokens, Llama-3-8B layer shapes, bf16: {linear_ms * 1e3:.1f} us")
    print(f"one layer's prefill (attention + weight products): {(prefill_ms + linear_ms) * 1e3:.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev.name, "torch": torch.__version__, "decode": rows,
                       "prefill_attention_32k_us": prefill_ms * 1e3,
                       "prefill_linears_32k_us": linear_ms * 1e3}, f, indent=1)


if __name__ == "__main__":
    main()
