// multimodal/anyres.h — LLaVA-NeXT's "anyres" images exactly as HF's LlavaNextImageProcessor (PIL
// backend) and LlavaNextModel.pack_image_features handle them:
//
//   AnyresPreprocess p;  p.tile = 336;  p.pinpoints = {{336, 672}, {672, 336}, ...};   // (height, width)
//   AnyresGrid g = anyres_grid(img.width, img.height, p);     // best resolution, tiles, unpadded grid
//   std::vector<float> px = preprocess_anyres(img, p);        // [1 + rows * cols][3][tile][tile]
//
// 1. The best resolution (HF's select_best_resolution over the pinpoints, read as (height, width)
//    pairs): the largest effective resolution min(int(w s) * int(h s), w h) with s = min(W / w, H / h),
//    ties to the smaller waste W H - effective, then to the first listed.
// 2. The image resized into it keeping its aspect (get_patch_output_size: the tighter side fills,
//    the other ceil(side * scale) capped), Pillow-exact bicubic, padded with black (0) to the best
//    resolution (the odd pixel of the padding bottom / right), cut into tile x tile crops row-major.
// 3. The base image: the original stretched to tile x tile (bicubic), before the crops.
// 4. Every crop rescaled (x / 255) and normalised as the CLIP processor does.
// The feature map (side = tile / patch features per tile side, rows * side x cols * side) is unpadded
// as HF's unpad_image does: the dimension the image does not fill loses (cur - int(round(orig *
// cur_other / orig_other, 7))) // 2 feature rows (or columns) on both sides. Each kept row then ends
// with the learned newline: an image is side^2 + kept_rows * (kept_cols + 1) rows in a sequence, the
// base image's first. (llama.cpp reads the pinpoints as (width, height), makes no tiles for images up
// to one tile a side, stretches the base bilinearly and neither unpads nor adds newlines.)
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "image.h"

namespace aircache {

struct AnyresPreprocess {
    int tile = 336;                                  // clip.vision.image_size (HF's crop and base size)
    int patch = 14;                                  // clip.vision.patch_size (features per tile side: tile / patch)
    std::vector<std::pair<int, int>> pinpoints;      // (height, width), multiples of the tile
    float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
};

struct AnyresGrid {
    int best_height = 0, best_width = 0;      // the chosen pinpoint
    int rows = 0, cols = 0;                   // tiles: best / tile
    int resized_width = 0, resized_height = 0;  // the image inside the best resolution
    int pad_left = 0, pad_top = 0;              // its offset there (black around it)
    // the unpadded feature grid: rows [row0, row1) and columns [col0, col1) of the
    // (rows * side) x (cols * side) map
    int side = 0;
    int row0 = 0, row1 = 0, col0 = 0, col1 = 0;
    int64_t n_crops() const { return int64_t(rows) * cols + 1; }
    // rows the image takes in a sequence: the base's side^2, then each kept row's features and newline
    int64_t n_tokens() const { return int64_t(side) * side + int64_t(row1 - row0) * (col1 - col0 + 1); }
    // of them, the image's features (the compression candidates): all but the newlines
    int64_t n_features() const { return int64_t(side) * side + int64_t(row1 - row0) * (col1 - col0); }
};

// HF's select_best_resolution: the (height, width) pinpoint for a width x height image (InputError for
// a non-positive size or no pinpoints).
std::pair<int, int> select_best_resolution(int width, int height, const std::vector<std::pair<int, int>>& pinpoints);

// The grid of a width x height image (InputError for a bad size or settings: tile, patch, pinpoints
// positive multiples of the tile).
AnyresGrid anyres_grid(int width, int height, const AnyresPreprocess& p);

// HF's pixel_values for one image, float32 [1 + rows * cols][3][tile][tile]: the base image, then the
// tiles row-major. `grid` (optional) receives anyres_grid's result.
std::vector<float> preprocess_anyres(const Image& img, const AnyresPreprocess& p, AnyresGrid* grid = nullptr);

}  // namespace aircache
