"""Real-time factor of the separate stage's model: seconds of compute per second of clip audio, for a
clip with two characters (each character is one extraction pass), through the stage's own windowing,
batching and overlap-add. Random weights (full-size network from clearvoice's packaged YAML, or the
reduced test model with --tiny): the arithmetic is the same as with the real checkpoint.

    .venv/bin/python benchmarks/separation_rtf.py                    # 6 s clip, 2 characters, CPU
    .venv/bin/python benchmarks/separation_rtf.py --device cuda --batch-size 8 --seconds 10

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from mtcc.media.windows import window_starts
from mtcc.stages import separate as sep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="clip length")
    p.add_argument("--characters", type=int, default=2)
    p.add_argument("--window-seconds", type=float, default=3.0)
    p.add_argument("--overlap", type=float, default=0.4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--tiny", action="store_true", help="the reduced model make_tiny writes, not the full one")
    p.add_argument("--warmup", action="store_true", help="one untimed 1 s forward first")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = sep.packaged_settings()
    if args.tiny:
        settings["network_audio"].update(sep.TINY_AUDIO)
    torch.manual_seed(0)
    net = sep.build_network(settings).to(args.device)
    params = sum(x.numel() for x in net.parameters())

    visual_s = [0.0]
    started = [0.0]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def pre(*_: object) -> None:
        sync()
        started[0] = time.perf_counter()

    def post(*_: object) -> None:
        sync()
        visual_s[0] += time.perf_counter() - started[0]

    net.ref_encoder.register_forward_pre_hook(pre)
    net.ref_encoder.register_forward_hook(post)

    def forward(audio: np.ndarray, visual: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            a, v = torch.from_numpy(audio).to(args.device), torch.from_numpy(visual).to(args.device)
            return net(a, v).float().cpu().numpy()

    rate = sep.AUDIO_RATE
    n = int(round(args.seconds * rate))
    rng = np.random.default_rng(0)
    t = np.arange(n) / rate
    bursts = np.sin(2 * np.pi * 3 * t) > 0  # a 220 Hz tone switched on and off, plus noise
    mix = (0.3 * np.sin(2 * np.pi * 220 * t) * bursts + rng.normal(0, 0.05, n)).astype(np.float32)
    frames = int(np.ceil(args.seconds * sep.VIDEO_FPS))
    lips = rng.normal(0, 1, (args.characters, frames, sep.LIP_SIZE, sep.LIP_SIZE)).astype(np.float32)
    window = int(round(args.window_seconds * rate))
    hop = max(1, int(round(window * (1 - args.overlap))))
    if args.warmup:
        forward(mix[None, :rate], lips[0, None, :25])
        visual_s[0] = 0.0
    sync()
    t0 = time.perf_counter()
    _, calls = sep.separate_tracks(forward, [mix], [lips], [float(sep.VIDEO_FPS)], window=window, hop=hop,
                                   forward_batch=args.batch_size)
    sync()
    wall = time.perf_counter() - t0
    windows = len(window_starts(n, window, hop))
    print(json.dumps({
        "model": "AV_MossFormer2_TSE_16K" + (" (reduced)" if args.tiny else ""), "weights": "random",
        "params_m": round(params / 1e6, 2), "device": args.device, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "clip_s": args.seconds, "characters": args.characters,
        "window_s": args.window_seconds, "overlap": args.overlap, "windows_per_character": windows,
        "batch_size": args.batch_size, "forward_calls": calls, "compute_s": round(wall, 2),
        "visual_encoder_s": round(visual_s[0], 2),
        "rtf": round(wall / args.seconds, 3), "rtf_per_character": round(wall / args.seconds / args.characters, 3),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
