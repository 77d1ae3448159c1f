#include "multimodal/anyres.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common.h"

namespace aircache {

namespace {

constexpr int kMaxSide = 1 << 16;
constexpr int64_t kMaxTiles = 1024;

void check_settings(const AnyresPreprocess& p) {
    if (p.tile < 1 || p.tile > 8192 || p.patch < 1 || p.patch > p.tile)
        throw InputError(strprintf("anyres preprocessing: tile %d or patch %d is out of range", p.tile, p.patch));
    if (p.pinpoints.empty()) throw InputError("anyres preprocessing: no grid pinpoints");
    for (const auto& [h, w] : p.pinpoints) {
        if (h < p.tile || w < p.tile || h % p.tile || w % p.tile || h > kMaxSide || w > kMaxSide)
            throw InputError(strprintf("anyres preprocessing: pinpoint (%d, %d) is not a positive multiple of the %d px "
                                       "tile", h, w, p.tile));
        if (int64_t(h) * w > kMaxImagePixels || int64_t(h / p.tile) * (w / p.tile) > kMaxTiles)
            throw InputError(strprintf("anyres preprocessing: pinpoint (%d, %d) is too large (at most %lld pixels and "
                                       "%lld tiles)", h, w, static_cast<long long>(kMaxImagePixels),
                                       static_cast<long long>(kMaxTiles)));
    }
}

// Python's int(round(x, 7)) for x >= 0: x rounded to 7 decimals (correctly, from its exact binary
// value, ties to even: what glibc's printf does too), then truncated.
int64_t int_round7(double x) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.7f", x);
    return static_cast<int64_t>(std::strtod(buf, nullptr));
}

// Python's x // 2 (floor division)
int64_t floor_half(int64_t x) { return x >= 0 ? x / 2 : -((-x + 1) / 2); }

}  // namespace

std::pair<int, int> select_best_resolution(int width, int height, const std::vector<std::pair<int, int>>& pinpoints) {
    if (width <= 0 || height <= 0) throw InputError(strprintf("select_best_resolution: the image is %dx%d", width, height));
    const double ow = width, oh = height;
    const int64_t area = int64_t(width) * height;
    if (pinpoints.empty()) throw InputError("select_best_resolution: no grid pinpoints");
    // (HF starts from an effective resolution of 0 and an infinite waste: a sliver of an image that keeps
    // no pixel anywhere still gets the least wasteful resolution)
    int64_t best_eff = 0, best_waste = -1;
    std::pair<int, int> best{0, 0};
    for (const auto& [H, W] : pinpoints) {
        const double s = std::min(static_cast<double>(W) / ow, static_cast<double>(H) / oh);
        const int64_t dw = static_cast<int64_t>(ow * s), dh = static_cast<int64_t>(oh * s);
        const int64_t eff = std::min(dw * dh, area), waste = int64_t(W) * H - eff;
        if (eff > best_eff || (eff == best_eff && (best_waste < 0 || waste < best_waste))) {
            best_eff = eff;
            best_waste = waste;
            best = {H, W};
        }
    }
    return best;
}

AnyresGrid anyres_grid(int width, int height, const AnyresPreprocess& p) {
    check_settings(p);
    AnyresGrid g;
    const auto [H, W] = select_best_resolution(width, height, p.pinpoints);
    g.best_height = H;
    g.best_width = W;
    g.rows = H / p.tile;
    g.cols = W / p.tile;
    // get_patch_output_size: the side with the smaller scale fills, the other keeps the aspect
    const double sw = static_cast<double>(W) / width, sh = static_cast<double>(H) / height;
    if (sw < sh) {
        g.resized_width = W;
        g.resized_height = static_cast<int>(std::min<double>(std::ceil(height * sw), H));
    } else {
        g.resized_height = H;
        g.resized_width = static_cast<int>(std::min<double>(std::ceil(width * sh), W));
    }
    g.pad_left = (W - g.resized_width) / 2;
    g.pad_top = (H - g.resized_height) / 2;
    // unpad_image on the (rows * side) x (cols * side) feature map
    g.side = p.tile / p.patch;
    const int cur_h = g.rows * g.side, cur_w = g.cols * g.side;
    g.row0 = 0;
    g.row1 = cur_h;
    g.col0 = 0;
    g.col1 = cur_w;
    const double orig_aspect = static_cast<double>(width) / height, cur_aspect = static_cast<double>(cur_w) / cur_h;
    if (orig_aspect > cur_aspect) {
        const int64_t new_h = int_round7(height * (static_cast<double>(cur_w) / width));
        const int pad = static_cast<int>(floor_half(cur_h - new_h));
        g.row0 = pad;
        g.row1 = cur_h - pad;
    } else {
        const int64_t new_w = int_round7(width * (static_cast<double>(cur_h) / height));
        const int pad = static_cast<int>(floor_half(cur_w - new_w));
        g.col0 = pad;
        g.col1 = cur_w - pad;
    }
    // a sliver of an image can unpad to no row (only the base image's features remain) or to rows of no
    // feature (a newline each), as in HF
    g.row1 = std::max(g.row1, g.row0);
    g.col1 = std::max(g.col1, g.col0);
    return g;
}

std::vector<float> preprocess_anyres(const Image& img, const AnyresPreprocess& p, AnyresGrid* grid) {
    if (img.width <= 0 || img.height <= 0 || img.rgb.size() != size_t(img.width) * img.height * 3)
        throw InputError(strprintf("preprocess_anyres: a %dx%d image with %zu bytes", img.width, img.height,
                                   img.rgb.size()));
    const AnyresGrid g = anyres_grid(img.width, img.height, p);
    if (grid) *grid = g;
    const int S = p.tile;
    ImagePreprocess norm;  // each crop: already tile x tile, only rescaled and normalised
    norm.image_size = S;
    norm.mode = ImageMode::Stretch;
    norm.filter = Resample::Bicubic;
    for (int c = 0; c < 3; ++c) {
        norm.mean[c] = p.mean[c];
        norm.std[c] = p.std[c];
    }
    const size_t crop = size_t(3) * S * S;
    std::vector<float> out(static_cast<size_t>(g.n_crops()) * crop);
    // the base image: the original stretched to S x S (bicubic)
    std::vector<float> base = preprocess_image(img, norm);
    std::memcpy(out.data(), base.data(), crop * sizeof(float));
    // the high-resolution image: resized into the best resolution, black around it
    const Image resized = resize_pillow(img, g.resized_width, g.resized_height, Resample::Bicubic);
    Image tile;
    tile.width = tile.height = S;
    tile.rgb.resize(size_t(S) * S * 3);
    for (int r = 0; r < g.rows; ++r)
        for (int c = 0; c < g.cols; ++c) {
            std::fill(tile.rgb.begin(), tile.rgb.end(), uint8_t(0));
            for (int y = 0; y < S; ++y) {
                const int sy = r * S + y - g.pad_top;  // row of `resized`
                if (sy < 0 || sy >= g.resized_height) continue;
                const int x0 = std::max(c * S, g.pad_left), x1 = std::min((c + 1) * S, g.pad_left + g.resized_width);
                if (x1 <= x0) continue;
                std::memcpy(&tile.rgb[(size_t(y) * S + (x0 - c * S)) * 3],
                            &resized.rgb[(size_t(sy) * g.resized_width + (x0 - g.pad_left)) * 3], size_t(x1 - x0) * 3);
            }
            const std::vector<float> t = preprocess_image(tile, norm);
            std::memcpy(out.data() + static_cast<size_t>(1 + r * g.cols + c) * crop, t.data(), crop * sizeof(float));
        }
    return out;
}

}  // namespace aircache
