// image.h — decoding PNG/JPEG and preparing an image for a CLIP vision tower.
//
// The reference is Hugging Face's LLaVA/CLIP image processor with its PIL backend (transformers 5:
// LlavaImageProcessorPil / CLIPImageProcessorPil), itself built on Pillow. Every step here gives
// the same bytes (uint8 steps) or the same float32 values (rescale, normalize) as that pipeline:
//
//   Image img = load_image_file("cat.jpg");             // RGB uint8, alpha composited on white
//   ImagePreprocess p;                                  // image_size, mean, std from the mmproj
//   p.image_size = 336; p.mean = {...}; p.std = {...};  // (clip.vision.image_size, image_mean/std)
//   std::vector<float> x = preprocess_image(img, p);    // float32 CHW [3][336][336]
//
// Pixels are always RGB uint8, row-major, 3 bytes per pixel (HxWx3). Transparency is composited
// onto white exactly as HF's convert_to_rgb does (Pillow's alpha_composite over opaque white, which
// equals round((c*a + 255*(255-a)) / 255)).
//
// Errors (common.h): InputError for bad arguments (sizes, channel counts), IOError when the file
// cannot be read, FormatError for data that is not a (valid) PNG/JPEG, UnsupportedError when the
// format was not compiled in (the message lists what this build reads).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace aircache {

// An RGB image: height rows of width pixels, 3 bytes each (R, G, B).
struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;  // (height, width, 3)
    // Dynamic resolution: at most this many tokens (0: the model's limits). Set when a prompt is fitted
    // to the context (Engine::image_token_counts).
    int64_t max_tokens = 0;
};

// The largest image accepted (width * height), from a decoder or from pixels: 2^28 pixels.
constexpr int64_t kMaxImagePixels = int64_t(1) << 28;

// An Image from interleaved uint8 pixels (height, width, channels), row-major, no padding.
// channels: 1 (gray, replicated), 3 (RGB, copied), 4 (RGBA: composited onto white).
// InputError for a zero or negative size, a size over kMaxImagePixels, or another channel count.
Image image_from_pixels(const uint8_t* data, int height, int width, int channels);

// Decodes a PNG or JPEG file (recognised by its signature, not its name) to RGB, giving the
// pixels HF's convert_to_rgb(PIL.Image.open(path)) gives:
//  - PNG: every colour type and bit depth, interlaced or not. Palette and gray are expanded,
//    16-bit samples keep their high byte (as Pillow reads 16-bit RGB, RGBA and LA), transparency
//    (alpha channel or tRNS) is composited onto white. Gamma, ICC and sBIT are ignored, as Pillow
//    does. Two departures, where Pillow departs from the PNG spec: 16-bit gray keeps the high byte
//    (Pillow's convert("RGB") clips those samples to 255), and tRNS on 2/4-bit gray and on 16-bit
//    images matches the raw samples (Pillow compares scaled or reduced ones).
//  - JPEG: gray, YCbCr/RGB and CMYK/YCCK with Pillow's libjpeg settings (ISLOW DCT, fancy
//    upsampling; CMYK taken as Adobe-inverted and converted with Pillow's integer formula).
//    The EXIF orientation is not applied (Image.open does not either).
// A truncated or corrupt file is a FormatError ("corrupt PNG: ...", "corrupt JPEG: ..."), other
// data a FormatError "not a PNG or JPEG image", a GIF/WebP/BMP/TIFF/HEIF/AVIF/QOI file or a format
// built without its library an UnsupportedError listing the formats this build reads. Bad data
// never crashes; images over kMaxImagePixels are refused before their pixels are allocated.
Image load_image_file(const std::string& path);

// Decodes an in-memory PNG/JPEG file (same rules as load_image_file; `name` goes in messages).
Image decode_image(const uint8_t* data, size_t size, const std::string& name = "<memory>");

// The formats this build decodes: a subset of {"png", "jpeg"} (libpng/libjpeg found at build time).
std::vector<std::string> image_formats();

// Bicubic resampling bit-identical to Pillow's Image.resize((new_width, new_height), BICUBIC) on
// an RGB image: separable, each pass rounded and clipped to uint8 (horizontal first, except when
// the image loses more than twice as many rows as columns: Pillow 13's order), a = -0.5 kernel
// whose support widens by the downscale factor, coefficients in fixed point (22 fractional bits).
// A dimension that does not change is not resampled.
Image resize_bicubic(const Image& img, int new_width, int new_height);

// Pillow's resize with another of its filters (the same separable fixed-point scheme and pass
// order; supports 1, 2, 3 input samples widened by the downscale factor): BILINEAR (triangle),
// BICUBIC (a = -0.5), LANCZOS (a = 3).
enum class Resample { Bilinear, Bicubic, Lanczos };
Image resize_pillow(const Image& img, int new_width, int new_height, Resample filter);

// Pads to a square of side max(width, height) filled with `fill`; the image goes at offset
// (side - height) / 2 rows or (side - width) / 2 columns (HF LLaVA pad_to_square, LLaVA's
// expand2square). A square image is returned unchanged.
Image expand_to_square(const Image& img, const uint8_t fill[3]);

// A width x height window at ((W - width) / 2, (H - height) / 2) (floor division, as HF's
// center_crop). Where the window leaves the image (the image is smaller than the crop) HF pads the
// image with zeros, centred with ceil((new - old) / 2) first, and this does the same.
Image center_crop(const Image& img, int width, int height);

enum class ImageMode {
    Pad,   // LLaVA-1.5 "pad": expand_to_square with the mean colour, then the CLIP steps
    Crop,  // CLIP: resize the shortest edge, centre crop (the image's borders are cut)
    Stretch,  // resize to image_size x image_size, the aspect ratio not kept (Gemma 3, SigLIP)
};

struct ImagePreprocess {
    int image_size = 336;                                 // clip.vision.image_size
    float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};   // clip.vision.image_mean (OpenAI CLIP)
    float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};   // clip.vision.image_std
    ImageMode mode = ImageMode::Pad;
    Resample filter = Resample::Bicubic;  // Stretch mode's filter (Pad and Crop: bicubic)
};

// The vision tower's input, float32 CHW [3][image_size][image_size]:
//  1. Pad mode: expand_to_square with fill = int(255 * mean[c]) per channel.
//  2. resize_bicubic so the shortest edge is image_size and the other is
//     int(image_size * long / short) (HF get_resize_output_image_size, truncating).
//  3. center_crop image_size x image_size.
//  4. x = float32(double(v) * (1/255)), then (x - mean) / std in float32 (HF rescale, normalize).
// Stretch mode instead resizes the whole image to image_size x image_size with `filter`.
// Pad mode never allocates the square (the rows of pure fill are resized once), so panoramas
// work; the padded side is limited to 65536. InputError when image_size is not in [1, 8192], an
// std is not a positive finite number, a mean is not finite (not in [0, 1] for pad mode), or the
// padded side or the resized image is too large.
std::vector<float> preprocess_image(const Image& img, const ImagePreprocess& p);

// The size a width x height image is resized to before the centre crop (HF's shortest-edge
// rule; in Pad mode it applies to the square): {width, height}.
std::pair<int, int> preprocess_resize_size(int width, int height, int image_size);

// --- dynamic resolution (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: HF's Qwen2VLImageProcessor, PIL backend) ---

// HF's smart_resize: {height, width}, both multiples of `factor` (patch x merge), the aspect ratio
// kept as closely as possible, height x width within [min_pixels, max_pixels] (sides rounded half
// to even, as Python's round). InputError for a non-positive size, factor or limit, or an aspect
// ratio above 200 (HF's ValueError).
std::pair<int, int> smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels);

struct DynamicPreprocess {
    int patch_size = 14;
    int merge_size = 2;
    int temporal_patch_size = 2;           // a still image is repeated to fill the frames
    int64_t min_pixels = 56 * 56;          // HF's size["shortest_edge"]
    int64_t max_pixels = 28 * 28 * 1280;   // HF's size["longest_edge"]
    float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
};

// HF's pixel_values for one image: stretched to smart_resize's size with Pillow-exact bicubic,
// x / 255 normalised by mean/std, cut into patches: rows [grid_h * grid_w] in 2x2-merge-block order
// (merged row, merged column, in-block row, in-block column), each row channel x frame x pixel row x
// pixel column (3 * temporal * patch * patch values).
struct DynamicPatches {
    std::vector<float> rows;
    int64_t grid_t = 1, grid_h = 0, grid_w = 0;
    int64_t row_size = 0;
    int64_t n_merged() const;  // the image's tokens in the sequence: grid_h * grid_w / merge^2
    int merge_size = 2;
};
DynamicPatches preprocess_dynamic(const Image& img, const DynamicPreprocess& p);


// --- tiled images (SmolVLM / SmolVLM2 / Idefics3: HF's SmolVLMImageProcessor, PIL backend) ---

struct TilePreprocess {
    int longest_edge = 1536;  // HF's size["longest_edge"] (clip.vision.preproc_image_size)
    int tile = 384;           // HF's max_image_size["longest_edge"]: the tower's image_size
    float mean[3] = {0.5f, 0.5f, 0.5f};
    float std[3] = {0.5f, 0.5f, 0.5f};
};

// How an image is cut. rows = cols = 0: not split (one tile, the whole image); otherwise rows x
// cols tiles, row-major, and the global view (the whole image as one tile) after them.
struct TileGrid {
    int rows = 0, cols = 0;
    int width = 0, height = 0;   // the first resize: the longest edge to longest_edge (HF's resize)
    int refined_width = 0, refined_height = 0;  // then both sides up to multiples of the tile
    int64_t n_tiles() const { return rows > 0 ? int64_t(rows) * cols + 1 : 1; }
};

// HF's sizes for a width x height image: the long side becomes longest_edge (smaller images are
// enlarged), the short one int(longest_edge / aspect) rounded up to even, both capped at 4096 (HF's
// MAX_IMAGE_SIZE); then the long side rounded up to a multiple of the tile, the short one
// int(long / aspect) rounded up too (resize_for_vision_encoder); split when either exceeds one tile.
// Python's float arithmetic throughout. InputError for a non-positive size or setting.
TileGrid tile_grid(int width, int height, const TilePreprocess& p);

// HF's pixel_values for one image, float32 [n_tiles][3][tile][tile]: both resizes with Pillow-exact
// LANCZOS (a size that does not change is copied), the tiles cut from the refined image row-major,
// the global view the refined image resized to tile x tile (LANCZOS), x / 255 normalised by
// mean/std. `grid` (optional) receives tile_grid's result.
std::vector<float> preprocess_tiles(const Image& img, const TilePreprocess& p, TileGrid* grid = nullptr);


// --- dynamic tiles (InternVL 2.5 / 3: HF's GotOcr2ImageProcessor with crop_to_patches, PIL backend; the
// same rule as InternVL's own dynamic_preprocess) ---

struct CanvasPreprocess {
    int tile = 448;       // clip.vision.image_size
    int min_tiles = 1;    // clip.vision.preproc_min_tiles (HF's min_patches)
    int max_tiles = 12;   // clip.vision.preproc_max_tiles (HF's max_patches)
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
};

// The grid {columns, rows} for a width x height image (HF's get_optimal_tiled_canvas): of the grids
// c x r with min_tiles <= c r <= max_tiles (ordered by c r, then by c), the one whose aspect ratio c / r
// is closest to width / height; on a tie the later grid wins while the image's area is more than half
// the grid's (tile^2 c r). max_tiles 1: {1, 1}. InputError for a non-positive size or setting.
std::pair<int, int> canvas_grid(int width, int height, const CanvasPreprocess& p);

// The tiles an image becomes: the grid's, plus the thumbnail when there is more than one.
int64_t canvas_tiles(int width, int height, const CanvasPreprocess& p);

// HF's pixel_values for one image, float32 [n_tiles][3][tile][tile]: the image stretched to (columns x
// tile) x (rows x tile) with Pillow-exact bicubic and cut into tiles row-major, then (more than one
// tile) the thumbnail, the original image stretched to tile x tile; x / 255 normalised by mean/std.
std::vector<float> preprocess_canvas(const Image& img, const CanvasPreprocess& p);

}  // namespace aircache
