// multimodal/media.h — what one image becomes in a prompt: a media item (a segment of rows).
//
// HF's convention holds throughout: in a sequence of ids an image occupies as many rows as the ids
// the family's HF processor writes for it (runs of the image token; LLaVA-NeXT's newline rows
// included), and those rows take the item's embeddings in order. A media item says, per row, what
// the decoder sees there (an embedding, or a marker token inside the image such as a tile
// separator), which rows are visual (the compression candidates), the rows' positions relative to
// the item's start (1-D or multi-axis), and whether the item's rows attend to each other both ways.
// A SmolVLM image's markers sit between its rows: its item spans from its first image row to its
// last, the markers inside are marker rows (text for the compression policies), those before and
// after are ordinary text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace aircache {

struct MediaItem {
    int64_t n_rows = 0;              // prompt rows the item occupies
    int64_t n_embd = 0;
    std::vector<float> embd;         // [n_rows][n_embd] (rows holding a marker token: unused)
    std::vector<int32_t> tokens;     // [n_rows]: -1 = an embedding row, else a marker token id; empty: all embeddings
    std::vector<uint8_t> visual;     // [n_rows]: compression candidates; empty: every embedding row
    std::vector<int32_t> pos;        // [n_rows][n_pos_axes] offsets from the item's start position; empty: 0, 1, 2, ...
    bool bidirectional = false;      // attention among the item's rows goes both ways
    // DeepStack (Qwen3-VL): [n_deepstack][n_rows][n_embd] features the first decoder layers add at the
    // item's rows (zero for marker rows); empty: none.
    int n_deepstack = 0;
    std::vector<float> deepstack;
    // Marker tokens between the image's rows (SmolVLM's tiles), as Engine::encode_image gives the
    // item: the ids the image takes in a prompt from its first image row to its last, -1 for each
    // embedding row (in order), else the marker's id; empty: none. make_prompt places such an item
    // as those rows (tokens set, embd spread over them, layout cleared).
    std::vector<int32_t> layout;

    bool is_embedding(int64_t r) const { return tokens.empty() || tokens[static_cast<size_t>(r)] < 0; }
    bool is_visual(int64_t r) const { return visual.empty() ? is_embedding(r) : visual[static_cast<size_t>(r)] != 0; }
    // Position offset of row r on axis a (of n_axes).
    int32_t pos_offset(int64_t r, int a, int n_axes) const {
        return pos.empty() ? static_cast<int32_t>(r) : pos[static_cast<size_t>(r * n_axes + a)];
    }
};

}  // namespace aircache
