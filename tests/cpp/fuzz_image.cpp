// libFuzzer target for images: the PNG/JPEG decoders through the project's wrapper (decode_image),
// then every preprocessing step on whatever size came out — or on raw pixels of an arbitrary size
// and channel count — with arbitrary output sizes, crop windows, fill colours, means and stds.
// Every call either succeeds with an image of the size asked for (a preprocessed image of exactly
// 3 x S x S finite values; dynamic-resolution patches on a grid of the factor; smart_resize sides
// that are positive multiples of the factor; SmolVLM's tiles on a grid of the tile; LLaVA-NeXT's anyres
// crops and grids inside their best resolution) or throws
// FormatError / UnsupportedError / InputError.
//
// Input: byte 0 picks the path (bit 0: decode the rest as a file; else the next bytes give
// height, width, channels and the pixels repeat the rest), then sizes and parameters.
//
//   ./fuzz_image -max_total_time=60 CORPUS_DIR
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "common.h"
#include "fuzz_common.h"
#include "image.h"
#include "multimodal/anyres.h"

using namespace aircache;

namespace {

[[noreturn]] void fail(const char* what, long long a, long long b) {
    std::fprintf(stderr, "fuzz_image: %s (%lld vs %lld)\n", what, a, b);
    std::abort();
}

void check_size(const Image& img, int w, int h, const char* what) {
    if (img.width != w || img.height != h) fail(what, img.width * 100000LL + img.height, w * 100000LL + h);
    if (img.rgb.size() != static_cast<size_t>(w) * h * 3) fail(what, static_cast<long long>(img.rgb.size()), 3LL * w * h);
}

void preprocess_steps(const Image& img, fuzz::Bytes& in) {
    // arbitrary resizes (sizes in [-2, 509]: zero and negative sizes must be refused; outputs kept
    // under 2^16 pixels so that a run stays fast under ASan)
    const int rw = static_cast<int>(in.u16() % 512) - 2, rh = static_cast<int>(in.u16() % 512) - 2;
    try {
        if (static_cast<int64_t>(rw) * rh <= (int64_t(1) << 16)) check_size(resize_bicubic(img, rw, rh), rw, rh, "resize_bicubic");
    } catch (const InputError&) {
    }
    const int cw = static_cast<int>(in.u16() % 512) - 2, ch = static_cast<int>(in.u16() % 512) - 2;
    try {
        check_size(center_crop(img, cw, ch), cw, ch, "center_crop");
    } catch (const InputError&) {
    }
    const uint8_t fill[3] = {in.u8(), in.u8(), in.u8()};
    if (static_cast<int64_t>(img.width) * img.height <= (int64_t(1) << 18)) {
        const int side = img.width > img.height ? img.width : img.height;
        if (static_cast<int64_t>(side) * side <= (int64_t(1) << 18)) check_size(expand_to_square(img, fill), side, side, "expand_to_square");
    }

    // the tower's input: size, mode, and (sometimes) a fuzzed mean / std
    ImagePreprocess p;
    const uint8_t flags = in.u8();
    p.image_size = (flags & 0x80) ? static_cast<int>(in.u16() % 340) - 2 : 1 + in.u8() % 96;
    p.mode = (flags & 1) ? ImageMode::Crop : ImageMode::Pad;
    if (flags & 2)
        for (int c = 0; c < 3; ++c) p.mean[c] = in.f32();
    if (flags & 4)
        for (int c = 0; c < 3; ++c) p.std[c] = in.f32();
    try {
        const std::vector<float> x = preprocess_image(img, p);
        const size_t want = 3 * static_cast<size_t>(p.image_size) * p.image_size;
        if (x.size() != want) fail("preprocess_image size", static_cast<long long>(x.size()), static_cast<long long>(want));
        for (float v : x)
            if (!std::isfinite(v)) fail("preprocess_image gave a non-finite value", 0, 0);
    } catch (const InputError&) {
    }
    (void)preprocess_resize_size(img.width, img.height, p.image_size > 0 ? p.image_size : 1);

    // dynamic resolution (Qwen-VL): arbitrary patch / merge / limits, kept small enough to be fast
    DynamicPreprocess d;
    const uint8_t g = in.u8();
    d.patch_size = 1 + g % 20;
    d.merge_size = 1 + (g >> 5) % 3;
    d.temporal_patch_size = 1 + in.u8() % 3;
    d.min_pixels = static_cast<int64_t>(in.u16()) - 4;
    d.max_pixels = d.min_pixels + static_cast<int64_t>(in.u16()) * 2;
    if (flags & 8)
        for (int c = 0; c < 3; ++c) d.std[c] = in.f32();
    try {
        const DynamicPatches dp = preprocess_dynamic(img, d);
        const int64_t f = static_cast<int64_t>(d.patch_size) * d.merge_size;
        if (dp.grid_h <= 0 || dp.grid_w <= 0 || (dp.grid_h * d.patch_size) % f || (dp.grid_w * d.patch_size) % f)
            fail("preprocess_dynamic grid", dp.grid_h, dp.grid_w);
        if (dp.row_size != 3LL * d.temporal_patch_size * d.patch_size * d.patch_size ||
            static_cast<int64_t>(dp.rows.size()) != dp.grid_h * dp.grid_w * dp.row_size)
            fail("preprocess_dynamic size", static_cast<long long>(dp.rows.size()), dp.grid_h * dp.grid_w * dp.row_size);
        for (float v : dp.rows)
            if (!std::isfinite(v)) fail("preprocess_dynamic gave a non-finite value", 0, 0);
    } catch (const InputError&) {
    }

    // smart_resize alone (where a Qwen-VL image's token count comes from): it allocates nothing, so
    // any size, factor and pixel limits; the sides are positive multiples of the factor, at most 65536
    const int sh = (flags & 16) ? img.height : static_cast<int>(in.u32()), sw = (flags & 16) ? img.width : static_cast<int>(in.u32());
    const int factor = (flags & 32) ? static_cast<int>(in.u32()) : static_cast<int>(in.u16() % 4200) - 2;
    const int64_t lo = static_cast<int64_t>(in.u32()) - 8, hi = lo + static_cast<int64_t>(in.u32()) * (1 + in.u16());
    try {
        const auto [rh2, rw2] = smart_resize(sh, sw, factor, lo, hi);
        if (rh2 <= 0 || rw2 <= 0 || rh2 % factor || rw2 % factor || rh2 > 65536 || rw2 > 65536)
            fail("smart_resize", rh2, rw2);
    } catch (const InputError&) {
    }

    // tiles (SmolVLM): a longest edge and a tile size (small enough to be fast), or either out of
    // range; the refined sides are multiples of the tile, split exactly when larger than one tile,
    // n_tiles x 3 x tile x tile finite values
    TilePreprocess tp;
    const uint8_t t = in.u8();
    tp.longest_edge = (t & 1) ? static_cast<int>(in.u16() % 300) - 2 : 1 + in.u8();
    tp.tile = (t & 2) ? static_cast<int>(in.u16() % 200) - 2 : 1 + in.u8() % 96;
    if (t & 4)
        for (int c = 0; c < 3; ++c) tp.std[c] = in.f32();
    try {
        TileGrid gr;
        const std::vector<float> x = preprocess_tiles(img, tp, &gr);
        const int M = tp.tile;
        if (gr.refined_width % M || gr.refined_height % M || gr.refined_width < M || gr.refined_height < M)
            fail("preprocess_tiles refined size", gr.refined_width, gr.refined_height);
        const bool split = gr.refined_width > M || gr.refined_height > M;
        if (split != (gr.rows > 0) || (split && (gr.rows * M != gr.refined_height || gr.cols * M != gr.refined_width)))
            fail("preprocess_tiles grid", gr.rows, gr.cols);
        if (x.size() != static_cast<size_t>(gr.n_tiles()) * 3 * M * M)
            fail("preprocess_tiles size", static_cast<long long>(x.size()), gr.n_tiles() * 3LL * M * M);
        for (float v : x)
            if (!std::isfinite(v)) fail("preprocess_tiles gave a non-finite value", 0, 0);
    } catch (const InputError&) {
    }
    // anyres (LLaVA-NeXT): a small tile and patch, pinpoints that may not be multiples of the tile; a grid
    // whose best resolution is a listed pinpoint, the unpadded map inside the tiles' feature map, the
    // image placed inside the best resolution, 1 + rows x cols crops of finite values
    AnyresPreprocess ap;
    ap.tile = 1 + in.u8() % 64;
    ap.patch = 1 + in.u8() % 16;
    for (int k = 0, n = in.u8() % 6; k < n; ++k) {
        const uint8_t a = in.u8(), b = in.u8();
        ap.pinpoints.emplace_back((a & 128) ? a - 128 : ap.tile * (1 + a % 4), (b & 128) ? b - 128 : ap.tile * (1 + b % 4));
    }
    auto check_grid = [&](const AnyresGrid& g) {
        bool listed = false;
        for (const auto& [h, w] : ap.pinpoints) listed = listed || (h == g.best_height && w == g.best_width);
        if (!listed || g.rows * ap.tile != g.best_height || g.cols * ap.tile != g.best_width)
            fail("anyres_grid best resolution", g.best_height, g.best_width);
        if (g.resized_width < 1 || g.resized_height < 1 || g.pad_left < 0 || g.pad_top < 0 ||
            g.pad_left + g.resized_width > g.best_width || g.pad_top + g.resized_height > g.best_height)
            fail("anyres_grid placement", g.resized_width, g.resized_height);
        if (g.side != ap.tile / ap.patch || g.row0 < 0 || g.row0 > g.row1 || g.row1 > g.rows * g.side || g.col0 < 0 ||
            g.col0 > g.col1 || g.col1 > g.cols * g.side || g.n_tokens() < int64_t(g.side) * g.side)
            fail("anyres_grid unpadded map", g.row1 - g.row0, g.col1 - g.col0);
    };
    try {
        AnyresGrid g;
        const std::vector<float> x = preprocess_anyres(img, ap, &g);
        check_grid(g);
        if (x.size() != static_cast<size_t>(g.n_crops()) * 3 * ap.tile * ap.tile)
            fail("preprocess_anyres size", static_cast<long long>(x.size()), g.n_crops());
        for (float v : x)
            if (!std::isfinite(v)) fail("preprocess_anyres gave a non-finite value", 0, 0);
    } catch (const InputError&) {
    }
    try {  // the grid alone (the token count): any image size
        check_grid(anyres_grid(static_cast<int>(in.u32()), static_cast<int>(in.u32()), ap));
    } catch (const InputError&) {
    }
    // tile_grid alone (the token count): any size and settings, nothing allocated
    try {
        tp.longest_edge = static_cast<int>(in.u32());
        tp.tile = static_cast<int>(in.u32());
        const TileGrid gr = tile_grid(static_cast<int>(in.u32()), static_cast<int>(in.u32()), tp);
        if (gr.n_tiles() < 1 || gr.refined_width % tp.tile || gr.refined_height % tp.tile)
            fail("tile_grid", gr.refined_width, gr.refined_height);
    } catch (const InputError&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    fuzz::Bytes in(data + 1, size - 1);
    Image img;
    try {
        if (data[0] & 1) {
            // the whole rest is the file; the steps' parameters are its bytes from offset 16 on
            // (a PNG's IHDR, a JPEG's first segments: they vary from file to file)
            uint8_t params[24] = {0};
            for (size_t i = 0; i < sizeof params && 17 + i < size; ++i) params[i] = data[17 + i];
            img = decode_image(data + 1, size - 1, "<fuzz>");
            if (img.width <= 0 || img.height <= 0 || img.rgb.size() != static_cast<size_t>(img.width) * img.height * 3)
                fail("decode_image returned a malformed image", img.width, img.height);
            fuzz::Bytes pin(params, sizeof params);
            preprocess_steps(img, pin);
        } else {
            const int h = static_cast<int>(in.u16() % 600) - 2, w = static_cast<int>(in.u16() % 600) - 2;
            const int channels = in.u8() % 6;
            std::vector<uint8_t> px;
            if (h > 0 && w > 0 && channels > 0) {
                px.resize(static_cast<size_t>(h) * w * channels);
                const std::string tail = in.rest();
                for (size_t i = 0; i < px.size(); ++i) px[i] = tail.empty() ? uint8_t(i) : uint8_t(tail[i % tail.size()]);
                fuzz::Bytes pin(reinterpret_cast<const uint8_t*>(tail.data()), tail.size());
                img = image_from_pixels(px.data(), h, w, channels);
                check_size(img, w, h, "image_from_pixels");
                preprocess_steps(img, pin);
            } else {
                uint8_t one = 0;
                img = image_from_pixels(&one, h, w, channels);  // must refuse
                fail("image_from_pixels accepted a non-positive size or no channels", h, w);
            }
        }
    } catch (const FormatError&) {
    } catch (const UnsupportedError&) {
    } catch (const InputError&) {
    }
    return 0;
}
