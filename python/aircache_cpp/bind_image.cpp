// bind_image.cpp — image decoding and preprocessing (argument conversion only; logic in cpp/image*).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>

#include "common.h"
#include "image.h"

namespace nb = nanobind;
using namespace aircache;

namespace {

using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

template <typename T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::vector<size_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.data(), owner);
}

nb::ndarray<nb::numpy, uint8_t> image_to_numpy(Image&& img) {
    const size_t h = static_cast<size_t>(img.height), w = static_cast<size_t>(img.width);
    return to_numpy(std::move(img.rgb), {h, w, 3});
}

std::string shape_text(const AnyArray& a) {
    std::string s = "(";
    for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// A uint8 array HxW or HxWxC (C = 1, 3, 4; any strides) as an RGB Image; `rgb_only` accepts HxWx3 only.
Image image_from_array(const AnyArray& a, bool rgb_only, const char* what) {
    if (a.dtype() != nb::dtype<uint8_t>())
        throw InputError(std::string(what) + ": the image array must have dtype uint8 (0..255); convert floats "
                         "with (x * 255).round().astype(numpy.uint8) if they are in [0, 1]");
    const size_t nd = a.ndim();
    if (nd != 2 && nd != 3)
        throw InputError(std::string(what) + ": the image array must be HxW or HxWxC, got shape " + shape_text(a));
    const int64_t h = static_cast<int64_t>(a.shape(0)), w = static_cast<int64_t>(a.shape(1));
    const int64_t c = nd == 3 ? static_cast<int64_t>(a.shape(2)) : 1;
    if (rgb_only && c != 3)
        throw InputError(std::string(what) + ": expected an RGB array HxWx3, got shape " + shape_text(a));
    if (c != 1 && c != 3 && c != 4)
        throw InputError(std::string(what) + ": " + std::to_string(c) +
                         " channels; expected HxW (gray), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape " +
                         shape_text(a));
    if (h <= 0 || w <= 0 || h * w > kMaxImagePixels)
        throw InputError(std::string(what) + ": the image size must be positive and at most " +
                         std::to_string(kMaxImagePixels) + " pixels, got shape " + shape_text(a));
    // Gather into a dense buffer (the array may be a strided view).
    const int64_t sh = a.stride(0), sw = a.stride(1), sc = nd == 3 ? a.stride(2) : 1;
    const uint8_t* base = static_cast<const uint8_t*>(a.data());
    std::vector<uint8_t> dense(static_cast<size_t>(h * w * c));
    if (sh == w * c && sw == c && sc == 1) {
        std::memcpy(dense.data(), base, dense.size());
    } else {
        size_t i = 0;
        for (int64_t y = 0; y < h; ++y)
            for (int64_t x = 0; x < w; ++x)
                for (int64_t k = 0; k < c; ++k) dense[i++] = base[y * sh + x * sw + k * sc];
    }
    return image_from_pixels(dense.data(), static_cast<int>(h), static_cast<int>(w), static_cast<int>(c));
}

ImageMode mode_from_name(const std::string& s) {
    if (s == "pad") return ImageMode::Pad;
    if (s == "crop") return ImageMode::Crop;
    throw InputError("unknown image mode '" + s + "' (valid: pad, crop)");
}

void take3(const std::vector<float>& v, float out[3], const char* name) {
    if (v.size() != 3) throw InputError(strprintf("%s must have 3 values (R, G, B), got %zu", name, v.size()));
    for (int i = 0; i < 3; ++i) out[i] = v[i];
}

}  // namespace

void aircache_bind_image(nb::module_& m) {
    m.def("image_formats", &image_formats, "The image file formats this build decodes ('png', 'jpeg').");

    m.def("load_image", [](const std::string& path) {
        Image img;
        {
            nb::gil_scoped_release nogil;
            img = load_image_file(path);
        }
        return image_to_numpy(std::move(img));
    }, nb::arg("path"),
       "Decode a PNG or JPEG file to RGB uint8 HxWx3 (transparency composited on white).");

    m.def("decode_image", [](nb::bytes data, const std::string& name) {
        Image img;
        {
            nb::gil_scoped_release nogil;
            img = decode_image(static_cast<const uint8_t*>(data.data()), data.size(), name);
        }
        return image_to_numpy(std::move(img));
    }, nb::arg("data"), nb::arg("name") = "<bytes>",
       "Decode the bytes of a PNG or JPEG file to RGB uint8 HxWx3.");

    m.def("image_from_pixels", [](AnyArray a) {
        return image_to_numpy(image_from_array(a, false, "image array"));
    }, nb::arg("array"),
       "uint8 HxW (gray), HxWx1, HxWx3 or HxWx4 (RGBA, composited on white) to RGB uint8 HxWx3.");

    m.def("resize_bicubic", [](AnyArray a, int width, int height) {
        Image img = image_from_array(a, true, "resize_bicubic");
        {
            nb::gil_scoped_release nogil;
            img = resize_bicubic(img, width, height);
        }
        return image_to_numpy(std::move(img));
    }, nb::arg("array"), nb::arg("width"), nb::arg("height"),
       "Resize an RGB uint8 HxWx3 array exactly as PIL's Image.resize((width, height), BICUBIC).");

    m.def("expand_to_square", [](AnyArray a, const std::vector<int>& fill) {
        if (fill.size() != 3) throw InputError(strprintf("fill must have 3 values (R, G, B), got %zu", fill.size()));
        uint8_t f[3];
        for (int i = 0; i < 3; ++i) {
            if (fill[i] < 0 || fill[i] > 255) throw InputError(strprintf("fill[%d] = %d is outside 0..255", i, fill[i]));
            f[i] = static_cast<uint8_t>(fill[i]);
        }
        return image_to_numpy(expand_to_square(image_from_array(a, true, "expand_to_square"), f));
    }, nb::arg("array"), nb::arg("fill"),
       "Pad an RGB uint8 HxWx3 array to a square filled with `fill`, centred as HF LLaVA's pad_to_square.");

    m.def("center_crop", [](AnyArray a, int width, int height) {
        return image_to_numpy(center_crop(image_from_array(a, true, "center_crop"), width, height));
    }, nb::arg("array"), nb::arg("width"), nb::arg("height"),
       "Centre crop of an RGB uint8 HxWx3 array placed as HF's center_crop (zero padding where it is larger).");

    m.def("preprocess_image", [](AnyArray a, int image_size, const std::vector<float>& mean,
                                  const std::vector<float>& std, const std::string& mode) {
        ImagePreprocess p;
        p.image_size = image_size;
        take3(mean, p.mean, "mean");
        take3(std, p.std, "std");
        p.mode = mode_from_name(mode);
        Image img = image_from_array(a, false, "preprocess_image");
        std::vector<float> out;
        {
            nb::gil_scoped_release nogil;
            out = preprocess_image(img, p);
        }
        const size_t s = static_cast<size_t>(image_size);
        return to_numpy(std::move(out), {3, s, s});
    }, nb::arg("array"), nb::arg("image_size"), nb::arg("mean"), nb::arg("std"), nb::arg("mode") = "pad",
       "The CLIP input float32 [3, S, S] of an image array: 'pad' (LLaVA-1.5: square with the mean colour "
       "first) or 'crop' (CLIP), then shortest-edge bicubic resize, centre crop, /255, (x - mean) / std.");

    m.def("smart_resize", [](int height, int width, int factor, int64_t min_pixels, int64_t max_pixels) {
        return smart_resize(height, width, factor, min_pixels, max_pixels);
    }, nb::arg("height"), nb::arg("width"), nb::arg("factor"), nb::arg("min_pixels"), nb::arg("max_pixels"),
       "HF's Qwen2-VL smart_resize: (height, width), multiples of factor, pixels in [min_pixels, max_pixels].");

    m.def("preprocess_dynamic", [](AnyArray a, int patch_size, int merge_size, int temporal_patch_size,
                                    int64_t min_pixels, int64_t max_pixels, const std::vector<float>& mean,
                                    const std::vector<float>& std) {
        DynamicPreprocess p;
        p.patch_size = patch_size;
        p.merge_size = merge_size;
        p.temporal_patch_size = temporal_patch_size;
        p.min_pixels = min_pixels;
        p.max_pixels = max_pixels;
        take3(mean, p.mean, "mean");
        take3(std, p.std, "std");
        Image img = image_from_array(a, false, "preprocess_dynamic");
        DynamicPatches d;
        {
            nb::gil_scoped_release nogil;
            d = preprocess_dynamic(img, p);
        }
        const size_t n = static_cast<size_t>(d.grid_h * d.grid_w), r = static_cast<size_t>(d.row_size);
        return nb::make_tuple(to_numpy(std::move(d.rows), {n, r}), nb::make_tuple(d.grid_t, d.grid_h, d.grid_w));
    }, nb::arg("array"), nb::arg("patch_size"), nb::arg("merge_size"), nb::arg("temporal_patch_size"),
       nb::arg("min_pixels"), nb::arg("max_pixels"), nb::arg("mean"), nb::arg("std"),
       "HF's Qwen2-VL pixel_values [grid_h * grid_w, 3 * temporal * patch^2] and (grid_t, grid_h, grid_w).");
}
