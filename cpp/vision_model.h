// vision_model.h — the vision side of an mmproj GGUF (llama.cpp's `clip` files): preprocessing, a
// vision tower and a projector, giving one media item per image.
//
//   auto v = VisionModel::load(mmproj_file);          // by clip.projector_type
//   Compute c(cpu, device, 1, device ? 1 : 0);        // a tower runs wholly on one backend
//   c.place(v->params());
//   MediaItem item = v->encode(img, ImageMode::Pad, c);   // [n_rows][n_embd_out] + rows' layout
//
// One file per projector under cpp/models/ (registered by clip.projector_type in vision_model.cpp)
// over shared towers (models/clip.h: the CLIP ViT), written once over the backend ops.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/compute.h"
#include "gguf.h"
#include "image.h"
#include "multimodal/media.h"

namespace aircache {

struct VisionConfig {
    std::string projector;        // clip.projector_type
    int64_t image_size = 0;
    int64_t patch_size = 0;
    int64_t n_embd = 0;           // ViT width
    int64_t n_ff = 0;
    int64_t n_head = 0;
    int64_t n_layer = 0;          // layers run (stored layers up to the deepest feature layer)
    float eps = 1e-5f;
    float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    Activation act = Activation::QuickGELU;
    std::vector<int64_t> feature_layers;  // hidden-state indices (0 = embeddings after pre-LN)
    bool class_token = true;
    int64_t n_patches = 0;        // (image_size / patch_size)^2
    int64_t n_tokens = 0;         // rows of an image at the default size
    int64_t n_embd_out = 0;       // projector output width (the text model's n_embd)
    int n_pos_axes = 1;           // position components of the item's rows (3: M-RoPE (t, h, w))
    int n_deepstack = 0;          // DeepStack feature sets per row (Qwen3-VL)
};

class VisionModel {
public:
    // The projector named in the file (UnsupportedError listing the supported ones otherwise).
    static std::unique_ptr<VisionModel> load(std::shared_ptr<const GGUFFile> file);
    static std::vector<std::string> supported_projectors();
    virtual ~VisionModel() = default;

    const VisionConfig& config() const { return cfg_; }
    const GGUFFile& file() const { return *file_; }
    virtual ParamGroups params() = 0;
    // Rows the image takes in a sequence: the image-token ids HF's processor writes for it (marker
    // and separator tokens not counted; LLaVA-NeXT's newline rows counted). img null: an image of
    // the model's default size; InputError where the count depends on the image and there is none.
    // max_tokens > 0 (dynamic resolution only): the image sized for at most that many tokens, as a
    // lower image_max_tokens would.
    virtual int64_t n_image_tokens(const Image* img, int64_t max_tokens = 0) const = 0;
    // Preprocessing parameters from the file (image size, mean, std) in the given mode.
    virtual ImagePreprocess preprocess(ImageMode mode) const;
    // The pixels the tower takes for `img`, [rows][cols]: fixed-size projectors CHW as
    // [3 * image_size][image_size]; dynamic resolution HF's pixel_values (patch rows).
    virtual std::vector<float> pixel_values(const Image& img, ImageMode mode, int64_t max_tokens, int64_t& rows,
                                            int64_t& cols) const;
    // The image as the language model sees it (max_tokens as for n_image_tokens).
    virtual MediaItem encode(const Image& img, ImageMode mode, Compute& c, int64_t max_tokens = 0) = 0;
    // The vocabulary's token whose ids mark the image's rows (HF's image token).
    virtual const char* image_token() const { return "<image>"; }
    // Whether an image's token count depends on its size (dynamic resolution).
    virtual bool dynamic_resolution() const { return false; }
    // Whether an image's rows are interleaved with marker tokens (SmolVLM's tiles): then
    // image_text() gives the image's text and its media item comes with a layout (media.h).
    virtual bool has_markup() const { return false; }
    // The text HF's processor writes for `img` in place of the chat template's image marker, each
    // image row written as image_token() (SmolVLM: each tile after its "<row_r_col_c>" marker, the
    // global view last); "" when the image is a plain run of n_image_tokens() image tokens. The
    // runtime tokenizes it (Engine::image_ids). img null: as for n_image_tokens.
    virtual std::string image_text(const Image* img) const {
        (void)img;
        return "";
    }
    // Whether an image's count depends on its size (dynamic resolution, tiles): benches then size their
    // images as typical_image_size().
    virtual bool size_dependent() const { return dynamic_resolution() || has_markup(); }
    // A typical image {width, height} where counts depend on the size: a 1024x768 photo (LLaVA-NeXT:
    // the largest square grid resolution, its most tokens).
    virtual std::pair<int, int> typical_image_size() const { return {1024, 768}; }
    // Of an image's n_image_tokens() rows, those that are visual (the compression candidates): all of
    // them but LLaVA-NeXT's newline rows. img as for n_image_tokens.
    virtual int64_t n_visual_tokens(const Image* img) const { return n_image_tokens(img); }
    // What the verbose load line adds after the tower's size and tokens ("" for one image = one run of
    // n_tokens rows; LLaVA-NeXT: its anyres grids).
    virtual std::string layout_note() const { return ""; }
    // Dynamic resolution: the limits on an image's tokens (llama.cpp's --image-min-tokens /
    // --image-max-tokens; 0 = the family's default). Fixed-size projectors ignore them.
    virtual void set_image_token_limits(int64_t min_tokens, int64_t max_tokens) {
        (void)min_tokens;
        (void)max_tokens;
    }

protected:
    explicit VisionModel(std::shared_ptr<const GGUFFile> file) : file_(std::move(file)) {}
    std::shared_ptr<const GGUFFile> file_;
    VisionConfig cfg_;
};

// Loading helpers for mmproj tensors: FormatError naming the tensor when missing or misshaped.
Param vision_matrix(const GGUFFile& f, const std::string& name, std::vector<int64_t> ne);
Param vision_vector(const GGUFFile& f, const std::string& name, int64_t n, bool required = true);
int64_t vision_bounded(const GGUFFile& f, const std::string& key, int64_t v, int64_t lo, int64_t hi);
// clip.vision.image_mean / image_std into c (when present), validated.
void read_image_mean_std(const GGUFFile& f, VisionConfig& c);

}  // namespace aircache
