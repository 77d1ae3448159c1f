// random_model.h — random-weight LLaVA-style models of named shapes, built in memory (benchmarks).
//
//   RandomModel m = make_random_model("llava-79m", GGMLType::F16);   // text + mmproj GGUF files
//   EngineParams p; p.model_file = m.text; p.mmproj_file = m.mmproj;
//
// Shapes (the same as tools/make_random_model.py): tiny, llava-79m (text 768 wide, 12 layers,
// 12/4 heads, ff 1024, vocab 32000, tied; vision 336 px / patch 14 -> 576 tokens, ViT 384 x 6),
// mistral-7b-8l (text 4096 wide, 8 layers, 32/8 heads, ff 14336, vocab 32000; the same ViT),
// qwen2.5-vl-3b-8l and qwen3-vl-2b-8l (the real widths of Qwen2.5-VL-3B and Qwen3-VL-2B, text and
// ViT, with 8 text and 8 ViT layers; dynamic-resolution images), gemma3-4b-8l (Gemma 3 4B's widths,
// 8 + 8 layers, 256 tokens per image), llava-next-mistral-7b-8l (llava-v1.6-mistral-7b's widths,
// Mistral-7B and CLIP ViT-L/336, 8 + 8 layers, anyres: a 672 px image is 2,880 visual tokens + 48
// newlines), smolvlm2-2b-8l (SmolVLM2-2.2B's widths, 8 + 8 layers, 81 tokens
// per 384 px tile, with a placeholder vocabulary holding SmolVLM's image tokens), internvl3-2b-8l
// (InternVL3-2B's widths, Qwen2.5-1.5B and InternViT-300M, 8 + 8 layers, 256 tokens per 448 px tile, a
// placeholder vocabulary holding InternVL's image tokens).
// Weights are random with std 0.02 (norm gains around 1); quantized types get random blocks whose
// scales are set for that std. A K-quant row that is not a multiple of 256 falls back to F16.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gguf.h"

namespace aircache {

struct RandomModel {
    std::shared_ptr<const GGUFFile> text, mmproj;
    std::string shape;
    int64_t n_params = 0;  // text model
};

std::vector<std::string> random_model_shapes();
RandomModel make_random_model(const std::string& shape, GGMLType weight_type, uint64_t seed = 1);

// A GGUFFile over bytes it owns.
std::shared_ptr<const GGUFFile> gguf_from_bytes(std::vector<uint8_t> bytes, const std::string& name);

}  // namespace aircache
