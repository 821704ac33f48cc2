"""The GPU peer to beat: fast-musicgen 0.1.0 (PyPI; CUDA graphs, batch 1) at a given size, random weights.

Run by bench/gpu_check.py in a process of its own: fast-musicgen sets torch's default device for
the whole process. Prints one line: its ms per decoding step.
"""

from __future__ import annotations

import time


def main(scale: list[int], frames: int, text_len: int = 12) -> None:
    import torch
    from fast_musicgen.lm import CausalLM, LMRunner
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    dim, heads, layers = scale
    decoder = MusicgenDecoderConfig(
        hidden_size=dim,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        ffn_dim=4 * dim,
        num_codebooks=4,
        vocab_size=2048,
    )
    config = MusicgenConfig(
        text_encoder=T5Config(d_model=768).to_dict(),
        audio_encoder=EncodecConfig(codebook_size=2048).to_dict(),
        decoder=decoder.to_dict(),
    )
    torch.set_default_device("cuda")
    torch.manual_seed(0)
    runner = LMRunner.__new__(LMRunner)  # its constructor reads a checkpoint directory; we have random weights
    runner.model = CausalLM(config, device="cuda").to(torch.float16).eval()
    runner.cuda_graph, runner.prompt_max_len, runner.max_length = True, text_len, frames + 8
    runner.graphs, runner.graph_vars = {}, {}
    runner.model.set_cache(max_length=runner.max_length)
    runner.warmup()
    runner.capture_cuda_graph()
    text = torch.randn(1, text_len, 768, dtype=torch.float16)
    runner.generate_with_cuda_graph(text, max_steps=10)
    torch.cuda.synchronize()
    start = time.perf_counter()
    runner.generate_with_cuda_graph(text, max_steps=frames + 3)
    torch.cuda.synchronize()
    ms = 1000 * (time.perf_counter() - start) / (frames + 3)
    print(f"- fast-musicgen 0.1.0 (its CUDA graphs, batch 1, {frames} frames): {ms:.2f} ms/step")
