#include "vision_model.h"

#include <cmath>

#include "common.h"
#include "tensor.h"

namespace aircache {

// The projector table: one entry per file in cpp/models/ (clip.projector_type -> factory).
std::unique_ptr<VisionModel> make_projector_mlp(std::shared_ptr<const GGUFFile> file);
std::unique_ptr<VisionModel> make_projector_qwen2vl(std::shared_ptr<const GGUFFile> file);
std::unique_ptr<VisionModel> make_projector_qwen25vl(std::shared_ptr<const GGUFFile> file);
std::unique_ptr<VisionModel> make_projector_qwen3vl(std::shared_ptr<const GGUFFile> file);
std::unique_ptr<VisionModel> make_projector_gemma3(std::shared_ptr<const GGUFFile> file);
std::unique_ptr<VisionModel> make_projector_idefics3(std::shared_ptr<const GGUFFile> file);
std::unique_ptr<VisionModel> make_projector_internvl(std::shared_ptr<const GGUFFile> file);

namespace {

struct ProjectorEntry {
    const char* name;
    std::unique_ptr<VisionModel> (*make)(std::shared_ptr<const GGUFFile>);
};

const ProjectorEntry kProjectors[] = {
    {"mlp", make_projector_mlp},
    {"qwen2vl_merger", make_projector_qwen2vl},
    {"qwen2.5vl_merger", make_projector_qwen25vl},
    {"qwen2.5o", make_projector_qwen25vl},  // Qwen2.5-Omni's vision part (llama.cpp remaps it likewise)
    {"qwen3vl_merger", make_projector_qwen3vl},
    {"gemma3", make_projector_gemma3},
    {"idefics3", make_projector_idefics3},  // SmolVLM, SmolVLM2, Idefics3
    {"internvl", make_projector_internvl},  // InternVL 2.5 / 3
};

std::string shape_of(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

}  // namespace

std::vector<std::string> VisionModel::supported_projectors() {
    std::vector<std::string> v;
    for (const ProjectorEntry& p : kProjectors) v.push_back(p.name);
    return v;
}

std::unique_ptr<VisionModel> VisionModel::load(std::shared_ptr<const GGUFFile> file) {
    const GGUFFile& f = *file;
    const std::string arch = f.get_str("general.architecture", "");
    if (arch != "clip")
        throw InputError(f.path() + ": not an mmproj file (general.architecture is '" + printable(arch) +
                         "', expected 'clip')");
    if (!f.get_bool("clip.has_vision_encoder", true))
        throw UnsupportedError(f.path() + ": the mmproj file has no vision encoder (clip.has_vision_encoder = false)");
    std::string projector;
    if (f.has("clip.projector_type")) projector = f.get_str("clip.projector_type");
    else if (f.has("clip.vision.projector_type")) projector = f.get_str("clip.vision.projector_type");
    else if (f.get_bool("clip.has_llava_projector", false)) projector = "mlp";
    else f.fail("missing metadata key 'clip.projector_type'");
    std::string names;
    for (const ProjectorEntry& p : kProjectors) {
        if (projector == p.name) return p.make(std::move(file));
        names += (names.empty() ? "" : ", ") + std::string(p.name);
    }
    throw UnsupportedError(f.path() + ": projector type '" + printable(projector) + "' is not supported (supported: " +
                           names + "; mlp is the LLaVA-1.5 projector)");
}

ImagePreprocess VisionModel::preprocess(ImageMode mode) const {
    ImagePreprocess p;
    p.image_size = static_cast<int>(cfg_.image_size);
    for (int i = 0; i < 3; ++i) {
        p.mean[i] = cfg_.mean[i];
        p.std[i] = cfg_.std[i];
    }
    p.mode = mode;
    return p;
}

std::vector<float> VisionModel::pixel_values(const Image& img, ImageMode mode, int64_t, int64_t& rows,
                                             int64_t& cols) const {
    const ImagePreprocess p = preprocess(mode);
    rows = 3 * static_cast<int64_t>(p.image_size);
    cols = p.image_size;
    return preprocess_image(img, p);
}

void read_image_mean_std(const GGUFFile& f, VisionConfig& c) {
    if (!f.has("clip.vision.image_mean") && !f.has("clip.vision.image_std")) return;
    const std::vector<float> mean = f.get_f32_array("clip.vision.image_mean");
    const std::vector<float> std_ = f.get_f32_array("clip.vision.image_std");
    if (mean.size() != 3 || std_.size() != 3)
        f.fail(strprintf("clip.vision.image_mean and image_std need 3 values each (got %zu and %zu)", mean.size(),
                         std_.size()));
    for (int i = 0; i < 3; ++i) {
        const float m = mean[static_cast<size_t>(i)], sd = std_[static_cast<size_t>(i)];
        if (!std::isfinite(m)) f.fail(strprintf("clip.vision.image_mean[%d] is %g (must be finite)", i, m));
        if (!(sd > 0.0f && std::isfinite(sd)))
            f.fail(strprintf("clip.vision.image_std[%d] is %g (must be finite and positive)", i, sd));
        if (!std::isfinite((0.0f - m) / sd) || !std::isfinite((1.0f - m) / sd))
            f.fail(strprintf("clip.vision.image_mean[%d] = %g with image_std[%d] = %g normalises pixels beyond the "
                             "float range", i, m, i, sd));
        c.mean[i] = m;
        c.std[i] = sd;
    }
}

int64_t vision_bounded(const GGUFFile& f, const std::string& key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        f.fail(strprintf("key '%s' is %lld, outside the sane range [%lld, %lld]", key.c_str(), static_cast<long long>(v),
                         static_cast<long long>(lo), static_cast<long long>(hi)));
    return v;
}

Param vision_matrix(const GGUFFile& f, const std::string& name, std::vector<int64_t> ne) {
    const GGUFTensorInfo* t = f.find_tensor(name);
    if (!t) f.fail("missing tensor '" + name + "'");
    bool ok = ne.size() <= 4;
    for (size_t i = 0; ok && i < 4; ++i) ok = t->ne[i] == (i < ne.size() ? ne[i] : 1);
    if (!ok) f.fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected " + shape_of(ne));
    const Weight w = Weight::from(*t, f.path());
    return Param::view(name, w.data, w.type, w.n_rows, w.n_cols, f.mapped());
}

Param vision_vector(const GGUFFile& f, const std::string& name, int64_t n, bool required) {
    const GGUFTensorInfo* t = f.find_tensor(name);
    if (!t) {
        if (required) f.fail("missing tensor '" + name + "'");
        return Param{};
    }
    if (t->n_elements != n)
        f.fail("tensor '" + name + "' has shape " + t->shape_str() + ", expected " + std::to_string(n) + " elements");
    std::vector<float> v = dequantize_tensor(*t, f.path());
    check_finite(f, name, v.data(), n);  // norms, biases, embeddings: always checked
    return Param::f32(name, std::move(v));
}

}  // namespace aircache
