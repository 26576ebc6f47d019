"""Peak memory of SwinV2-T at 1536x1536 (window 32): forward and one training step, with and without
sequential window attention (``attn_chunk_windows``) and activation checkpointing.

Each measurement runs in its own subprocess so peaks never mix: peak RSS (``ru_maxrss``) on CPU, and
``torch.cuda.max_memory_allocated`` when CUDA is present. ``--cap-gib`` bounds a child's address space so
a configuration that does not fit fails with "> cap" instead of pushing a shared machine into swap/OOM.

    .venv/bin/python benchmarks/memory.py                          # the table in MEMORY.md
    .venv/bin/python benchmarks/memory.py --img-size 768 --modes train
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODEL = "swinv2_tiny_window8_256"


def measure(img: int, window: int, mode: str, chunk: int | None, ckpt: bool, device: str, threads: int) -> dict:
    import torch

    from swinv2_serve import create_model

    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = create_model(MODEL, img_size=img, window_size=window, attn_chunk_windows=chunk).to(dev)
    model.set_grad_checkpointing(ckpt)
    x = torch.randn(1, 3, img, img, device=dev)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            model(x)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(1, dtype=torch.long, device=dev))
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out = {"seconds": round(time.perf_counter() - start, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "model_rss_gib": round(base_rss, 2)}
    if dev.type == "cuda":
        out["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def run_child(args: argparse.Namespace, mode: str, chunk: int | None, ckpt: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--img-size", str(args.img_size), "--window", str(args.window),
           "--modes", mode, "--device", args.device, "--threads", str(args.threads)]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    if ckpt:
        cmd += ["--ckpt"]

    def limit() -> None:
        if args.cap_gib:
            cap = int(args.cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        oom = "alloc" in tail.lower() or "memory" in tail.lower() or proc.returncode < 0
        return {"error": f"> {args.cap_gib} GiB address-space cap" if oom else tail[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=1536)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--modes", default="forward,train")
    parser.add_argument("--chunk", type=int, default=None, help="windows per attention step (child)")
    parser.add_argument("--chunk-windows", type=int, default=16, help="the chunk size compared")
    parser.add_argument("--ckpt", action="store_true")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap-gib", type=float, default=14.0, help="address-space cap per child (CPU); 0 = none")
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.img_size, args.window, args.modes, args.chunk, args.ckpt, args.device,
                                 args.threads)))
        return
    if args.device == "cuda":
        args.cap_gib = 0
    print(f"SwinV2-T {args.img_size}x{args.img_size} window {args.window}, batch 1, {args.device}", flush=True)
    print("| mode | attn_chunk_windows | grad checkpointing | peak RSS GiB | CUDA peak GiB | time s |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    for mode in args.modes.split(","):
        configs = [(None, False), (args.chunk_windows, False)]
        if mode == "train":
            configs += [(None, True), (args.chunk_windows, True)]
        for chunk, ckpt in configs:
            r = run_child(args, mode, chunk, ckpt)
            peak = r.get("error") or r["peak_rss_gib"]
            print(f"| {mode} | {chunk or '-'} | {'yes' if ckpt else 'no'} | {peak} | {r.get('cuda_peak_gib', '-')} | "
                  f"{r.get('seconds', '-')} |", flush=True)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
