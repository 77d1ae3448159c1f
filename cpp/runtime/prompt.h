// runtime/prompt.h — a request's input as the decoder takes it: rows of ids (HF's convention: an
// image's rows hold the image token) and the media items of its images, cut into segments.
//
//   Prompt p = make_prompt(e, ids, items);   // checks ids against the vocabulary and each image
//   p.segments                               // text runs and media items, in order
//   p.layout()                               // the rows as the compression policies see them
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "compress/layout.h"
#include "multimodal/media.h"

namespace aircache {

class Engine;

struct Segment {
    int64_t begin = 0, end = 0;  // rows [begin, end)
    int item = -1;               // media item index; -1: a text run
};

struct Prompt {
    std::vector<int32_t> ids;        // one id per row; image rows hold Engine::image_token_id()
    std::vector<MediaItem> media;    // the images' items, in order of appearance
    std::vector<Segment> segments;   // text runs and media items, in order, covering every row

    int64_t size() const { return static_cast<int64_t>(ids.size()); }
    int64_t n_visual() const;
    // Rows [0, m) as the compression policies see them (the visual rows of the media items); m < 0:
    // every row.
    compress::PromptLayout layout(int64_t m = -1) const;
    // Media items that start in rows [0, r).
    size_t items_before(int64_t r) const;
};

// Checks a sequence (InputError naming the problem): non-empty, at most n_ctx rows, ids inside the
// vocabulary except image rows, and each run of image rows matching its image (an item of n rows
// needs exactly n image-token rows, markers inside the item equal to the item's tokens; an item
// with a marker layout, SmolVLM's, is placed as its layout's rows first). With media, builds the
// segments. `counts` (instead of items): just the image rows each image takes (their total; also
// how runs split into images where no markers sit between an image's rows). `literal[i] != 0`
// (when literal has more than i entries): row i is text whatever its id, e.g. a generated token that
// happens to be the image token (fed as text during decoding, as HF transformers does): it is
// embedded as a token and takes no image.
Prompt make_prompt(const Engine& e, std::vector<int32_t> ids, std::vector<MediaItem> media,
                   const std::vector<uint8_t>& literal = {});
void check_sequence(const Engine& e, const std::vector<int32_t>& ids, const std::vector<int64_t>& counts,
                    const std::vector<uint8_t>& literal = {});

}  // namespace aircache
