// image.cpp — pixel operations: conversion to RGB, Pillow-exact bicubic resampling, padding,
// cropping and the CLIP/LLaVA preprocessing (decoders are in image_codecs.cpp).
#include "image.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"

namespace aircache {

namespace {

void check_size(int64_t width, int64_t height, const char* what) {
    if (width <= 0 || height <= 0)
        throw InputError(strprintf("%s: the image size must be positive, got %lldx%lld (width x height)", what,
                                   static_cast<long long>(width), static_cast<long long>(height)));
    if (width * height > kMaxImagePixels)
        throw InputError(strprintf("%s: %lldx%lld pixels is larger than the limit of %lld pixels", what,
                                   static_cast<long long>(width), static_cast<long long>(height),
                                   static_cast<long long>(kMaxImagePixels)));
}

void check_image(const Image& img, const char* what) {
    check_size(img.width, img.height, what);
    if (img.rgb.size() != static_cast<size_t>(img.width) * img.height * 3)
        throw InputError(strprintf("%s: the pixel buffer holds %zu bytes, not %dx%dx3", what, img.rgb.size(),
                                   img.width, img.height));
}

Image blank(int width, int height) {
    Image out;
    out.width = width;
    out.height = height;
    out.rgb.assign(static_cast<size_t>(width) * height * 3, 0);
    return out;
}

// Python's a // b for b > 0.
int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// ---------------------------------------------------------------------------------------------
// Bicubic resampling, Pillow's algorithm (libImaging/Resample.c, 8 bits per channel).
// ---------------------------------------------------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;  // two bits of headroom for the negative lobes

// Pad mode never materialises the square, but its resize still reads every padded row: a bound
// on the work and on the intermediate (side x image_size) rows.
constexpr int kMaxPadSide = 1 << 16;

double bicubic_kernel(double x) {
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

double bilinear_kernel(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= 3.14159265358979323846;
    return std::sin(x) / x;
}

double lanczos_kernel(double x) {
    return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;  // Pillow's lanczos_filter
}

// Pillow's filters: the kernel and its support (in input samples at scale 1).
double filter_support(Resample f) { return f == Resample::Bilinear ? 1.0 : f == Resample::Bicubic ? 2.0 : 3.0; }
double filter_kernel(Resample f, double x) {
    return f == Resample::Bilinear ? bilinear_kernel(x) : f == Resample::Bicubic ? bicubic_kernel(x) : lanczos_kernel(x);
}

uint8_t clip8(int32_t v) {
    const int32_t q = v >> kPrecisionBits;  // arithmetic shift: floor, as Pillow's table lookup
    return static_cast<uint8_t>(q < 0 ? 0 : (q > 255 ? 255 : q));
}

// Fixed-point weights of output positions [first, first + count) along one axis of in_size
// input samples resampled to out_size: output i reads input[start[i] .. start[i] + taps[i]) with
// weights w[i * ksize ...].
struct AxisWeights {
    int ksize = 0;
    std::vector<int> start, taps;
    std::vector<int32_t> w;
};

AxisWeights axis_weights(int in_size, int out_size, int first, int count, Resample filter = Resample::Bicubic) {
    AxisWeights a;
    // Pillow computes in1 - in0 in float (the box is float[4]); exact for these sizes.
    const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = filter_support(filter) * filterscale;
    a.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    a.start.resize(count);
    a.taps.resize(count);
    a.w.assign(static_cast<size_t>(count) * a.ksize, 0);
    std::vector<double> k(a.ksize);
    for (int i = 0; i < count; ++i) {
        const int xx = first + i;
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);  // truncation, as Pillow
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            k[x] = filter_kernel(filter, (x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < xmax; ++x) {
            if (ww != 0.0) k[x] /= ww;
            // Round half away from zero into 22 fractional bits.
            const double f = k[x] * (1 << kPrecisionBits);
            a.w[static_cast<size_t>(i) * a.ksize + x] = static_cast<int32_t>(k[x] < 0 ? f - 0.5 : f + 0.5);
        }
        a.start[i] = xmin;
        a.taps[i] = xmax;
    }
    return a;
}

// The two passes read their source through row_at(y): a pointer to the first sample they need of
// source row y (an image row, a row built on the fly, or a shared constant row).

// Horizontal pass: output row r (of n_rows) from source row row_first + r; output column i reads
// the source from column h.start[i] (row_at(y) points at column col_first).
template <typename RowAt>
Image horizontal_pass(RowAt row_at, int row_first, int n_rows, const AxisWeights& h, int col_first) {
    const int out_w = static_cast<int>(h.start.size());
    Image out = blank(out_w, n_rows);
    for (int y = 0; y < n_rows; ++y) {
        const uint8_t* row = row_at(row_first + y);
        uint8_t* dst = out.rgb.data() + static_cast<size_t>(y) * out_w * 3;
        for (int i = 0; i < out_w; ++i) {
            const int32_t* k = h.w.data() + static_cast<size_t>(i) * h.ksize;
            const uint8_t* p = row + static_cast<size_t>(h.start[i] - col_first) * 3;
            int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
            for (int t = 0; t < h.taps[i]; ++t, p += 3) {
                s0 += p[0] * k[t];
                s1 += p[1] * k[t];
                s2 += p[2] * k[t];
            }
            dst[i * 3 + 0] = clip8(s0);
            dst[i * 3 + 1] = clip8(s1);
            dst[i * 3 + 2] = clip8(s2);
        }
    }
    return out;
}

// Vertical pass over n_cols columns: output row j sums source rows v.start[j] onward. Integer
// sums a row at a time (the order of the additions does not matter).
template <typename RowAt>
Image vertical_pass(RowAt row_at, int n_cols, const AxisWeights& v) {
    const int out_h = static_cast<int>(v.start.size());
    Image out = blank(n_cols, out_h);
    const size_t n = static_cast<size_t>(n_cols) * 3;
    std::vector<int32_t> acc(n);
    for (int j = 0; j < out_h; ++j) {
        std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
        const int32_t* k = v.w.data() + static_cast<size_t>(j) * v.ksize;
        for (int t = 0; t < v.taps[j]; ++t) {
            const uint8_t* row = row_at(v.start[j] + t);
            const int32_t kt = k[t];
            for (size_t c = 0; c < n; ++c) acc[c] += row[c] * kt;
        }
        uint8_t* dst = out.rgb.data() + static_cast<size_t>(j) * n;
        for (size_t c = 0; c < n; ++c) dst[c] = clip8(acc[c]);
    }
    return out;
}

// The source range a pass reads: rows (or columns) start[0] .. start[last] + taps[last].
std::pair<int, int> span(const AxisWeights& a) {
    const size_t last = a.start.size() - 1;
    return {a.start[0], a.start[last] + a.taps[last] - a.start[0]};
}

// The window [x0, x0 + win_w) x [y0, y0 + win_h) of `img` resized to new_width x new_height:
// identical to resizing the whole image and cropping (each output sample depends only on its own
// position), without computing the parts a crop would throw away.
Image resize_window(const Image& img, int new_width, int new_height, int x0, int y0, int win_w, int win_h,
                    Resample filter = Resample::Bicubic) {
    const bool need_h = new_width != img.width;
    const bool need_v = new_height != img.height;
    auto image_rows = [&img](int col) {
        return [&img, col](int y) { return img.rgb.data() + (static_cast<size_t>(y) * img.width + col) * 3; };
    };
    if (!need_h && !need_v) {
        Image out = blank(win_w, win_h);
        for (int y = 0; y < win_h; ++y)
            std::memcpy(out.rgb.data() + static_cast<size_t>(y) * win_w * 3, image_rows(x0)(y0 + y),
                        static_cast<size_t>(win_w) * 3);
        return out;
    }
    AxisWeights h, v;
    if (need_h) h = axis_weights(img.width, new_width, x0, win_w, filter);
    if (need_v) v = axis_weights(img.height, new_height, y0, win_h, filter);
    if (!need_v) return horizontal_pass(image_rows(0), y0, win_h, h, 0);
    if (!need_h) return vertical_pass(image_rows(x0), win_w, v);

    // Pillow 13 runs the vertical pass first when the image loses more than twice as many rows
    // as it loses columns (max(h - nh, 0) > 2 max(w - nw, 0)); before that release, always the
    // horizontal pass first. The order changes the rounding between the passes, so it is part of
    // the result. (Established by comparing both orders against Pillow 13.0.0 on thousands of
    // random sizes: this rule picks the matching order in every case.)
    const int64_t rows_lost = std::max(img.height - new_height, 0), cols_lost = std::max(img.width - new_width, 0);
    if (rows_lost > 2 * cols_lost) {
        const auto [c0, nc] = span(h);
        const Image tmp = vertical_pass(image_rows(c0), nc, v);
        return horizontal_pass([&tmp](int y) { return tmp.rgb.data() + static_cast<size_t>(y) * tmp.width * 3; }, 0,
                               win_h, h, c0);
    }
    const auto [r0, nr] = span(v);
    const Image tmp = horizontal_pass(image_rows(0), r0, nr, h, 0);
    return vertical_pass(
        [&tmp, r0 = r0](int y) { return tmp.rgb.data() + static_cast<size_t>(y - r0) * tmp.width * 3; }, win_w, v);
}

// expand_to_square(img, fill) resized to size x size, without making the square: the rows of
// pure fill all give the same horizontal-pass row, computed once, and the image rows are padded
// one at a time. Same bytes as resize_window(expand_to_square(img, fill), ...).
Image resize_padded_square(const Image& img, const uint8_t fill[3], int size) {
    const int side = std::max(img.width, img.height);
    const int top = (side - img.height) / 2, left = (side - img.width) / 2;
    if (side == size) return expand_to_square(img, fill);
    const AxisWeights k = axis_weights(side, size, 0, size);  // the same both ways
    std::vector<uint8_t> fill_row(static_cast<size_t>(side) * 3), padded;
    for (int x = 0; x < side; ++x) std::memcpy(&fill_row[static_cast<size_t>(x) * 3], fill, 3);
    padded = fill_row;
    const Image body = horizontal_pass(
        [&](int y) {
            std::memcpy(&padded[static_cast<size_t>(left) * 3], &img.rgb[static_cast<size_t>(y - top) * img.width * 3],
                        static_cast<size_t>(img.width) * 3);
            return padded.data();
        },
        top, img.height, k, 0);
    const Image fill_out = horizontal_pass([&](int) { return fill_row.data(); }, 0, 1, k, 0);
    return vertical_pass(
        [&](int y) {
            return y >= top && y < top + img.height ? body.rgb.data() + static_cast<size_t>(y - top) * size * 3
                                                    : fill_out.rgb.data();
        },
        size, k);
}

}  // namespace

Image image_from_pixels(const uint8_t* data, int height, int width, int channels) {
    check_size(width, height, "image_from_pixels");
    if (channels != 1 && channels != 3 && channels != 4)
        throw InputError(strprintf("image_from_pixels: %d channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)", channels));
    Image out = blank(width, height);
    const size_t n = static_cast<size_t>(width) * height;
    uint8_t* o = out.rgb.data();
    if (channels == 3) {
        std::memcpy(o, data, n * 3);
    } else if (channels == 1) {
        for (size_t i = 0; i < n; ++i) o[i * 3] = o[i * 3 + 1] = o[i * 3 + 2] = data[i];
    } else {
        // Onto opaque white: round((c*a + 255*(255-a)) / 255). This is Pillow's alpha_composite
        // over white and HF's numpy formula alike (the exact quotient is never a tie).
        for (size_t i = 0; i < n; ++i) {
            const uint32_t a = data[i * 4 + 3];
            for (int c = 0; c < 3; ++c) o[i * 3 + c] = static_cast<uint8_t>((data[i * 4 + c] * a + 255u * (255u - a) + 127u) / 255u);
        }
    }
    return out;
}

Image resize_bicubic(const Image& img, int new_width, int new_height) {
    check_image(img, "resize_bicubic");
    check_size(new_width, new_height, "resize_bicubic (output)");
    return resize_window(img, new_width, new_height, 0, 0, new_width, new_height);
}

Image resize_pillow(const Image& img, int new_width, int new_height, Resample filter) {
    check_image(img, "resize");
    check_size(new_width, new_height, "resize (output)");
    return resize_window(img, new_width, new_height, 0, 0, new_width, new_height, filter);
}

Image expand_to_square(const Image& img, const uint8_t fill[3]) {
    check_image(img, "expand_to_square");
    if (img.width == img.height) return img;
    const int side = std::max(img.width, img.height);
    check_size(side, side, "expand_to_square (output)");
    Image out = blank(side, side);
    for (size_t i = 0; i < static_cast<size_t>(side) * side; ++i) std::memcpy(&out.rgb[i * 3], fill, 3);
    const int top = (side - img.height) / 2, left = (side - img.width) / 2;
    for (int y = 0; y < img.height; ++y)
        std::memcpy(&out.rgb[(static_cast<size_t>(top + y) * side + left) * 3],
                    &img.rgb[static_cast<size_t>(y) * img.width * 3], static_cast<size_t>(img.width) * 3);
    return out;
}

Image center_crop(const Image& img, int width, int height) {
    check_image(img, "center_crop");
    check_size(width, height, "center_crop (output)");
    // HF crops at top = (H - h) // 2; when the crop is taller than the image it first centres the
    // image on a zero canvas at ceil((h - H) / 2). Both give: source row = output row +
    // floor((H - h) / 2), zero outside the image (and the same for columns).
    const int top = floor_div(img.height - height, 2), left = floor_div(img.width - width, 2);
    Image out = blank(width, height);
    const int x_begin = std::max(0, -left), x_end = std::min(width, img.width - left);
    for (int y = 0; y < height; ++y) {
        const int sy = y + top;
        if (sy < 0 || sy >= img.height || x_begin >= x_end) continue;
        std::memcpy(&out.rgb[(static_cast<size_t>(y) * width + x_begin) * 3],
                    &img.rgb[(static_cast<size_t>(sy) * img.width + x_begin + left) * 3],
                    static_cast<size_t>(x_end - x_begin) * 3);
    }
    return out;
}

std::pair<int, int> preprocess_resize_size(int width, int height, int image_size) {
    // HF get_resize_output_image_size(default_to_square=False): the short edge becomes
    // image_size, the long edge int(image_size * long / short) (true division, truncated).
    const bool portrait = width <= height;
    const int64_t shorter = portrait ? width : height, longer = portrait ? height : width;
    const double l = static_cast<double>(int64_t(image_size) * longer) / static_cast<double>(shorter);
    if (!(l < 2147483647.0))
        throw InputError(strprintf("a %dx%d image resized to a shortest edge of %d is too large", width, height,
                                   image_size));
    const int new_long = static_cast<int>(l);
    return portrait ? std::make_pair(image_size, new_long) : std::make_pair(new_long, image_size);
}

namespace {

// HF's rescale and normalise of every byte value per channel: x = float32(float64(v) / 255), then
// (x - mean) / std in float32. Checks mean/std first (InputError): finite, std > 0, and pixels in
// [0, 1] normalising to finite floats.
struct NormTable {
    float v[3][256];
    NormTable(const float mean[3], const float std_[3]) {
        for (int c = 0; c < 3; ++c) {
            if (!std::isfinite(mean[c])) throw InputError(strprintf("image mean[%d] = %g is not finite", c, mean[c]));
            if (!(std::isfinite(std_[c]) && std_[c] > 0))
                throw InputError(strprintf("image std[%d] = %g is not a positive number", c, std_[c]));
            for (float x : {0.0f, 1.0f})
                if (!std::isfinite((x - mean[c]) / std_[c]))
                    throw InputError(strprintf("image mean[%d] = %g and std[%d] = %g normalise pixels beyond the "
                                               "float range", c, mean[c], c, std_[c]));
            for (int b = 0; b < 256; ++b) {
                const float x = static_cast<float>(static_cast<double>(b) * (1.0 / 255.0));
                v[c][b] = (x - mean[c]) / std_[c];
            }
        }
    }
};

}  // namespace

std::vector<float> preprocess_image(const Image& input, const ImagePreprocess& p) {
    check_image(input, "preprocess_image");
    const int S = p.image_size;
    if (S < 1 || S > 8192) throw InputError(strprintf("image_size %d is outside [1, 8192]", S));
    const NormTable norm(p.mean, p.std);

    Image win;
    if (p.mode == ImageMode::Stretch) {
        win = resize_window(input, S, S, 0, 0, S, S, p.filter);
    } else if (p.mode == ImageMode::Pad && input.width != input.height) {
        uint8_t fill[3];
        for (int c = 0; c < 3; ++c) {
            // HF: tuple(int(x * 255) for x in image_mean), truncation toward zero.
            const double v = static_cast<double>(p.mean[c]) * 255.0;
            if (!(v >= 0.0 && v < 256.0))
                throw InputError(strprintf("image mean[%d] = %g is outside [0, 1]: no padding colour for it", c,
                                           p.mean[c]));
            fill[c] = static_cast<uint8_t>(static_cast<int>(v));
        }
        // The square is resized to S x S whole (its shortest edge is S, nothing is cropped).
        const int side = std::max(input.width, input.height);
        if (side > kMaxPadSide)
            throw InputError(strprintf("a %dx%d image pads to a %dx%d square; pad mode takes sides up to %d (use crop)",
                                       input.width, input.height, side, side, kMaxPadSide));
        win = resize_padded_square(input, fill, S);
    } else {
        // Resize the shortest edge to S, then keep the centred S x S window. The resized size is
        // at least S both ways, so HF's center_crop never pads here; only the window is computed.
        const auto [rw, rh] = preprocess_resize_size(input.width, input.height, S);
        win = resize_window(input, rw, rh, (rw - S) / 2, (rh - S) / 2, S, S);
    }

    std::vector<float> out(static_cast<size_t>(3) * S * S);
    const size_t plane = static_cast<size_t>(S) * S;
    for (int c = 0; c < 3; ++c) {
        float* o = out.data() + c * plane;
        for (size_t i = 0; i < plane; ++i) o[i] = norm.v[c][win.rgb[i * 3 + c]];
    }
    return out;
}

std::pair<int, int> smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels) {
    if (height <= 0 || width <= 0) throw InputError(strprintf("smart_resize: the image is %dx%d", width, height));
    if (factor <= 0 || factor > 4096) throw InputError(strprintf("smart_resize: factor %d is outside [1, 4096]", factor));
    if (min_pixels <= 0 || max_pixels < min_pixels || max_pixels > (int64_t(1) << 40))
        throw InputError(strprintf("smart_resize: pixel limits [%lld, %lld] are not a range",
                                   static_cast<long long>(min_pixels), static_cast<long long>(max_pixels)));
    const double h = height, w = width, f = factor;
    const double aspect = std::max(h, w) / std::min(h, w);
    if (aspect > 200.0)
        throw InputError(strprintf("a %dx%d image has an aspect ratio of %.1f; at most 200 is supported", width,
                                   height, aspect));
    // Python's round(): half to even, which nearbyint does in the default rounding mode
    double hb = std::nearbyint(h / f) * f, wb = std::nearbyint(w / f) * f;
    if (hb * wb > static_cast<double>(max_pixels)) {
        const double beta = std::sqrt((h * w) / static_cast<double>(max_pixels));
        hb = std::max(f, std::floor(h / beta / f) * f);
        wb = std::max(f, std::floor(w / beta / f) * f);
    } else if (hb * wb < static_cast<double>(min_pixels)) {
        const double beta = std::sqrt(static_cast<double>(min_pixels) / (h * w));
        hb = std::ceil(h * beta / f) * f;
        wb = std::ceil(w * beta / f) * f;
    }
    if (hb > 65536.0 || wb > 65536.0)
        throw InputError(strprintf("a %dx%d image resizes to %.0fx%.0f: sides up to 65536 are supported", width, height,
                                   wb, hb));
    return {static_cast<int>(hb), static_cast<int>(wb)};
}

int64_t DynamicPatches::n_merged() const { return grid_t * grid_h * grid_w / (merge_size * merge_size); }

DynamicPatches preprocess_dynamic(const Image& input, const DynamicPreprocess& p) {
    check_image(input, "preprocess_dynamic");
    if (p.patch_size < 1 || p.patch_size > 1024 || p.merge_size < 1 || p.merge_size > 16 || p.temporal_patch_size < 1 ||
        p.temporal_patch_size > 16)
        throw InputError(strprintf("dynamic preprocessing: patch %d, merge %d, temporal %d out of range", p.patch_size,
                                   p.merge_size, p.temporal_patch_size));
    const NormTable norm(p.mean, p.std);
    const int factor = p.patch_size * p.merge_size;
    const auto [H, W] = smart_resize(input.height, input.width, factor, p.min_pixels, p.max_pixels);
    const int64_t pixels = static_cast<int64_t>(H) * W;
    if (pixels * 3 * p.temporal_patch_size > (int64_t(1) << 31))
        throw InputError(strprintf("a %dx%d image resizes to %dx%d: too large: lower max_pixels",
                                   input.width, input.height, W, H));
    const Image img = (H == input.height && W == input.width) ? input : resize_bicubic(input, W, H);

    DynamicPatches out;
    const int P = p.patch_size, M = p.merge_size, T = p.temporal_patch_size;
    out.merge_size = M;
    out.grid_h = H / P;
    out.grid_w = W / P;
    out.row_size = 3LL * T * P * P;
    out.rows.resize(static_cast<size_t>(out.grid_h * out.grid_w * out.row_size));
    const int64_t bw = out.grid_w / M;
    for (int64_t y = 0; y < out.grid_h; ++y)
        for (int64_t x = 0; x < out.grid_w; ++x) {
            const int64_t row = (((y / M) * bw + x / M) * M + y % M) * M + x % M;
            float* o = out.rows.data() + row * out.row_size;
            for (int c = 0; c < 3; ++c)
                for (int t = 0; t < T; ++t)
                    for (int py = 0; py < P; ++py) {
                        const uint8_t* src = img.rgb.data() + ((y * P + py) * static_cast<int64_t>(W) + x * P) * 3 + c;
                        for (int px = 0; px < P; ++px) *o++ = norm.v[c][src[px * 3]];
                    }
        }
    return out;
}


namespace {

// HF's _resize_output_size_rescale_to_max_len then _resize_output_size_scale_below_upper_bound:
// {width, height}, in Python's float arithmetic (true division, int() truncating).
std::pair<int64_t, int64_t> longest_edge_size(int64_t w, int64_t h, int64_t L) {
    constexpr int64_t kMaxImageSize = 4096;  // HF's MAX_IMAGE_SIZE
    double aspect = static_cast<double>(w) / static_cast<double>(h);
    if (w >= h) {
        w = L;
        h = static_cast<int64_t>(static_cast<double>(w) / aspect);
        if (h % 2 != 0) ++h;
    } else {
        h = L;
        w = static_cast<int64_t>(static_cast<double>(h) * aspect);
        if (w % 2 != 0) ++w;
    }
    h = std::max<int64_t>(h, 1);
    w = std::max<int64_t>(w, 1);
    aspect = static_cast<double>(w) / static_cast<double>(h);
    if (w >= h && w > kMaxImageSize) {
        w = kMaxImageSize;
        h = static_cast<int64_t>(static_cast<double>(w) / aspect);
    } else if (h > w && h > kMaxImageSize) {
        h = kMaxImageSize;
        w = static_cast<int64_t>(static_cast<double>(h) * aspect);
    }
    return {std::max<int64_t>(w, 1), std::max<int64_t>(h, 1)};
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace

TileGrid tile_grid(int width, int height, const TilePreprocess& p) {
    check_size(width, height, "tile_grid");
    if (p.longest_edge < 1 || p.longest_edge > 65536 || p.tile < 1 || p.tile > 8192)
        throw InputError(strprintf("tiled preprocessing: longest edge %d or tile %d is out of range", p.longest_edge,
                                   p.tile));
    const auto [w, h] = longest_edge_size(width, height, p.longest_edge);
    // resize_for_vision_encoder: the long side up to a multiple of the tile, the short side from the
    // aspect ratio (of the resized image) and then up to a multiple too
    const int64_t M = p.tile;
    const double aspect = static_cast<double>(w) / static_cast<double>(h);
    int64_t rw, rh;
    if (w >= h) {
        rw = round_up(w, M);
        rh = round_up(static_cast<int64_t>(static_cast<double>(rw) / aspect), M);
    } else {
        rh = round_up(h, M);
        rw = round_up(static_cast<int64_t>(static_cast<double>(rh) * aspect), M);
    }
    rw = std::max(rw, M);  // int() of a tiny short side is 0: HF's resize then fails; one tile here
    rh = std::max(rh, M);
    TileGrid g;
    g.width = static_cast<int>(w);
    g.height = static_cast<int>(h);
    g.refined_width = static_cast<int>(rw);
    g.refined_height = static_cast<int>(rh);
    if (rw > M || rh > M) {
        g.rows = static_cast<int>(rh / M);
        g.cols = static_cast<int>(rw / M);
    }
    return g;
}

std::vector<float> preprocess_tiles(const Image& input, const TilePreprocess& p, TileGrid* grid) {
    check_image(input, "preprocess_tiles");
    const NormTable norm(p.mean, p.std);
    const TileGrid g = tile_grid(input.width, input.height, p);
    if (grid) *grid = g;
    const int M = p.tile;
    const Image resized = resize_pillow(input, g.width, g.height, Resample::Lanczos);
    const Image refined = resize_pillow(resized, g.refined_width, g.refined_height, Resample::Lanczos);
    const size_t plane = static_cast<size_t>(M) * M;
    std::vector<float> out(static_cast<size_t>(g.n_tiles()) * 3 * plane);
    // tile t: the M x M window of `src` at (x0, y0)
    auto put = [&](int64_t t, const Image& src, int x0, int y0) {
        for (int c = 0; c < 3; ++c) {
            float* o = out.data() + (static_cast<size_t>(t) * 3 + c) * plane;
            for (int y = 0; y < M; ++y) {
                const uint8_t* row = src.rgb.data() + (static_cast<size_t>(y0 + y) * src.width + x0) * 3 + c;
                for (int x = 0; x < M; ++x) *o++ = norm.v[c][row[x * 3]];
            }
        }
    };
    if (g.rows == 0) {
        put(0, refined, 0, 0);
        return out;
    }
    int64_t t = 0;
    for (int r = 0; r < g.rows; ++r)
        for (int c = 0; c < g.cols; ++c) put(t++, refined, c * M, r * M);
    put(t, resize_pillow(refined, M, M, Resample::Lanczos), 0, 0);
    return out;
}

namespace {

void check_canvas(const CanvasPreprocess& p) {
    if (p.tile < 1 || p.tile > 8192 || p.min_tiles < 1 || p.max_tiles < p.min_tiles || p.max_tiles > 4096)
        throw InputError(strprintf("dynamic tiles: tile %d px, %d..%d tiles is out of range", p.tile, p.min_tiles,
                                   p.max_tiles));
}

}  // namespace

std::pair<int, int> canvas_grid(int width, int height, const CanvasPreprocess& p) {
    check_size(width, height, "canvas_grid");
    check_canvas(p);
    if (p.max_tiles == 1) return {1, 1};  // HF crops only when max_patches > 1: one tile
    // get_all_supported_aspect_ratios: (c, r) for c, r in 1..max with min <= c r <= max, stably sorted by c r
    std::vector<std::pair<int, int>> grids;
    for (int c = 1; c <= p.max_tiles; ++c)
        for (int r = 1; r <= p.max_tiles; ++r)
            if (int64_t(c) * r <= p.max_tiles && int64_t(c) * r >= p.min_tiles) grids.emplace_back(c, r);
    std::stable_sort(grids.begin(), grids.end(), [](const std::pair<int, int>& a, const std::pair<int, int>& b) {
        return a.first * a.second < b.first * b.second;
    });
    const double aspect = static_cast<double>(width) / static_cast<double>(height);
    const double area = static_cast<double>(int64_t(width) * height);  // exact below 2^53
    double best_diff = std::numeric_limits<double>::infinity();
    std::pair<int, int> best{1, 1};
    for (const auto& g : grids) {
        const double diff = std::fabs(aspect - static_cast<double>(g.first) / static_cast<double>(g.second));
        if (diff < best_diff) {
            best_diff = diff;
            best = g;
        } else if (diff == best_diff &&
                   area > 0.5 * static_cast<double>(p.tile) * static_cast<double>(p.tile) * g.first * g.second) {
            best = g;
        }
    }
    return best;
}

int64_t canvas_tiles(int width, int height, const CanvasPreprocess& p) {
    const auto [c, r] = canvas_grid(width, height, p);
    const int64_t n = int64_t(c) * r;
    return n > 1 ? n + 1 : 1;
}

std::vector<float> preprocess_canvas(const Image& input, const CanvasPreprocess& p) {
    check_image(input, "preprocess_canvas");
    const NormTable norm(p.mean, p.std);
    const auto [cols, rows] = canvas_grid(input.width, input.height, p);
    const int M = p.tile;
    if (int64_t(cols) * M * int64_t(rows) * M > kMaxImagePixels)
        throw InputError(strprintf("dynamic tiles: %d x %d tiles of %d px are too large an image", cols, rows, M));
    const Image canvas = resize_pillow(input, cols * M, rows * M, Resample::Bicubic);
    const int64_t n = int64_t(cols) * rows, n_tiles = n > 1 ? n + 1 : 1;
    const size_t plane = static_cast<size_t>(M) * M;
    std::vector<float> out(static_cast<size_t>(n_tiles) * 3 * plane);
    auto put = [&](int64_t t, const Image& src, int x0, int y0) {
        for (int c = 0; c < 3; ++c) {
            float* o = out.data() + (static_cast<size_t>(t) * 3 + c) * plane;
            for (int y = 0; y < M; ++y) {
                const uint8_t* row = src.rgb.data() + (static_cast<size_t>(y0 + y) * src.width + x0) * 3 + c;
                for (int x = 0; x < M; ++x) *o++ = norm.v[c][row[x * 3]];
            }
        }
    };
    for (int64_t t = 0; t < n; ++t) put(t, canvas, static_cast<int>(t % cols) * M, static_cast<int>(t / cols) * M);
    if (n > 1) put(n, resize_pillow(input, M, M, Resample::Bicubic), 0, 0);
    return out;
}

}  // namespace aircache
