"""The smallest real checkpoint of each supported family and its language model's KV geometry, so
`potwatch models` can say what a token costs before anything is downloaded.

Sources (config.json of each checkpoint's language model):
- Qwen/Qwen2-VL-2B-Instruct: 28 layers, 2 KV heads, head dim 128 (hidden 1536 / 12 heads).
- Qwen/Qwen2.5-VL-3B-Instruct: 36 layers, 2 KV heads, head dim 128 (hidden 2048 / 16 heads).
- Qwen/Qwen3-VL-2B-Instruct: 28 layers, 8 KV heads, head dim 128 (hidden 2048 / 16 heads), mrope_section
  [24, 20, 20] interleaved, DeepStack into layers 0-2 from vision layers [5, 11, 17].
- llava-hf/llava-onevision-qwen2-0.5b-ov-hf: its Qwen2-0.5B LM has 24 layers, 2 KV heads, head dim 64
  (hidden 896 / 14 heads); SigLIP 384 px / 14 px patches, pooled to 14 x 14 = 196 tokens a frame.
- HuggingFaceTB/SmolVLM2-256M-Video-Instruct: built on SmolVLM-256M-Instruct, whose LM is
  SmolLM2-135M (config.json: num_hidden_layers 30, num_key_value_heads 3, hidden_size 576 /
  num_attention_heads 9 = head dim 64); SigLIP base 512 px / 16 px, pixel shuffle 4 → 64 image tokens a
  frame (processor_config.json: image_seq_len 64; preprocessor_config.json: max_image_size 512,
  video_sampling.video_size.longest_edge 512)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from potwatch.compression.budget import KVGeometry


@dataclass(frozen=True)
class RealCheckpoint:
    family: str  # transformers model_type
    hub_id: str
    layers: int
    kv_heads: int
    head_dim: int
    pos_rows: int  # 3 for M-RoPE, 1 for plain RoPE

    def geometry(self, dtype: torch.dtype = torch.bfloat16) -> KVGeometry:
        return KVGeometry(self.layers, self.kv_heads, self.head_dim, dtype, pos_rows=self.pos_rows)


SMALLEST_CHECKPOINTS = (
    RealCheckpoint("qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", 28, 2, 128, 3),
    RealCheckpoint("qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", 36, 2, 128, 3),
    RealCheckpoint("qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct", 28, 8, 128, 3),
    RealCheckpoint("llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", 24, 2, 64, 1),
    RealCheckpoint("smolvlm", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", 30, 3, 64, 1),
)
