// compress/layout.h — the prompt and the model as the compression policies see them.
#pragma once

#include <cstdint>
#include <vector>

namespace aircache {
namespace compress {

// The prompt: m rows, and which of them are visual (an image's embeddings; the candidates of the
// `visual` scope). Policies work on these row indices; positions (what RoPE saw) may differ.
struct PromptLayout {
    int64_t m = 0;                  // prompt rows
    std::vector<int32_t> visual;    // visual rows, ascending (all images together)
    std::vector<uint8_t> is_visual; // [m]
    int n_images = 0;               // images (media items) with visual rows among the m rows
    // One past the last key each row attends to during prefill: empty when every row is causal
    // (r + 1); an image whose rows attend both ways (Gemma 3) gives its rows the image's end.
    std::vector<int32_t> key_end;
    int64_t keys_of(int64_t r) const { return key_end.empty() ? r + 1 : key_end[static_cast<size_t>(r)]; }
    // First row after the last visual one (0 without images): the post-vision text starts here.
    int64_t post_vision_start() const { return visual.empty() ? 0 : visual.back() + 1; }
};

// The layers a policy plans over (Engine::shape(): the layers that hold the whole prompt; Gemma 3's
// sliding-window layers are not among them) and their attention heads.
struct ModelShape {
    int n_layer = 0;
    int n_head = 0;
    int n_head_kv = 0;
    // The model layer behind each of the n_layer (empty: layer l is the model's layer l).
    std::vector<int> layers;
    int model_layer(int l) const { return layers.empty() ? l : layers[static_cast<size_t>(l)]; }
};

}  // namespace compress
}  // namespace aircache
