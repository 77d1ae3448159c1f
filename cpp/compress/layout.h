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
    // First row after the last visual one (0 without images): the post-vision text starts here.
    int64_t post_vision_start() const { return visual.empty() ? 0 : visual.back() + 1; }
};

struct ModelShape {
    int n_layer = 0;
    int n_head = 0;
    int n_head_kv = 0;
};

}  // namespace compress
}  // namespace aircache
