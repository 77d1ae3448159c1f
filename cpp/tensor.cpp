#include "tensor.h"

#include "common.h"

namespace aircache {

Weight Weight::from(const GGUFTensorInfo& t, const std::string& file) {
    require_supported(t.type, "tensor '" + printable(t.name) + "' in " + file);
    Weight w;
    w.name = t.name;
    w.type = t.type;
    w.info = t.info;
    w.n_cols = t.ne[0];
    w.n_rows = t.n_rows();
    w.row_bytes = aircache::row_bytes(*t.info, t.ne[0]);
    w.data = t.data;
    return w;
}

std::vector<float> dequantize_tensor(const GGUFTensorInfo& t, const std::string& file) {
    require_supported(t.type, "tensor '" + printable(t.name) + "' in " + file);
    std::vector<float> out(static_cast<size_t>(t.n_elements));
    dequantize_row(t.type, t.data, out.data(), t.n_elements);
    return out;
}

}  // namespace aircache
